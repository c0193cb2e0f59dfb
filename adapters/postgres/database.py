"""One PostgreSQL database: how to connect to it, its eventsourcing settings, and its schema."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from adapters.postgres.eventstore import TOPIC as PROCESS_RECORDER

MAX_SCHEMA_LEN = 48


def session_name(role: str) -> str:
    """The application_name of this process's sessions of one role: `<role> <pid>` (PostgreSQL keeps 63 bytes)."""
    return f"{role} {os.getpid()}"[:63]


def name_sessions(pool: ConnectionPool[Any], role: str) -> None:
    """Name the sessions of a pool made elsewhere (eventsourcing's, which sets no application_name):
    new connections carry `session_name(role)`, and those already open are replaced."""
    if not isinstance(pool.kwargs, dict):  # psycopg_pool also takes a function; eventsourcing passes a dict
        msg = f"cannot name the sessions of a pool whose connection arguments are {type(pool.kwargs).__name__}"
        raise TypeError(msg)
    pool.kwargs["application_name"] = session_name(role)
    if not pool.closed:
        pool.drain()


@dataclass(frozen=True)
class Database:
    """A `postgresql://` URL plus the schema that holds Lineup's tables (tests use one each)."""

    url: str
    schema: str = "public"

    def __post_init__(self) -> None:
        if not self.schema.replace("_", "").isalnum() or len(self.schema) > MAX_SCHEMA_LEN:
            msg = f"schema name must be letters, digits and underscores: {self.schema!r}"
            raise ValueError(msg)

    def params(self) -> dict[str, Any]:
        """The URL's parts (host may be a unix-socket directory), with the schema as search path and no JIT."""
        params = conninfo_to_dict(self.url)
        # jit=off: the change-feed statements (live_rows.STAGE above all) are planned with CTE row
        # estimates far above the real ones, which crosses jit_above_cost; compiling them took 1.77 s
        # of a 1.82 s publication of a 500-entry queue (EXPLAIN ANALYZE), and short statements never
        # win that back. Per connection, so a server's other databases keep their setting.
        params["options"] = f"-c search_path={self.schema} -c jit=off"
        return params

    def event_store_env(self, *, pool_size: int, lock_timeout: int) -> dict[str, str]:
        """Settings for eventsourcing's Postgres persistence (passed explicitly, never via os.environ)."""
        params = conninfo_to_dict(self.url)
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "PROCESS_RECORDER_TOPIC": PROCESS_RECORDER,  # binary column arrays: see adapters.postgres.eventstore
            "POSTGRES_DBNAME": str(params.get("dbname") or params.get("user") or "postgres"),
            "POSTGRES_HOST": str(params.get("host") or "localhost"),
            "POSTGRES_PORT": str(params.get("port") or "5432"),
            "POSTGRES_USER": str(params.get("user") or "postgres"),
            "POSTGRES_PASSWORD": str(params.get("password") or ""),
            "POSTGRES_SCHEMA": self.schema,
            "POSTGRES_POOL_SIZE": str(pool_size),
            "POSTGRES_MAX_OVERFLOW": str(pool_size),
            "POSTGRES_LOCK_TIMEOUT": str(lock_timeout),  # seconds; 0 would wait forever
            "POSTGRES_CONNECT_TIMEOUT": "10",
            "POSTGRES_PRE_PING": "n",  # a ping per checkout doubled round trips; errors are retried
        }

    def connect(self, application_name: str | None = None) -> psycopg.Connection[dict[str, Any]]:
        """One autocommit connection (LISTEN, DDL, tests); `application_name` shows in pg_stat_activity."""
        params = self.params()
        if application_name:
            params["application_name"] = application_name
        return psycopg.connect(**params, autocommit=True, row_factory=dict_row)

    def pool(self, *, min_size: int, max_size: int, name: str) -> ConnectionPool[psycopg.Connection[Any]]:
        """A connection pool for read models; opened here, closed by its owner. Its sessions show in
        pg_stat_activity as `<name> <pid>`, so PostgreSQL's work can be told apart by process and role."""
        pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            kwargs={
                **self.params(),
                "autocommit": True,
                "row_factory": dict_row,
                "application_name": session_name(name),
            },
            min_size=min_size,
            max_size=max_size,
            name=name,
            open=False,
            timeout=10,
        )
        pool.open(wait=True, timeout=30)
        return pool

    def lock_key(self, name: str | bytes) -> int:
        """A signed 64-bit advisory-lock key for `name` in this schema. Advisory locks are
        database-wide, so deployments (and tests) sharing a database in separate schemas must not
        share keys: one's projector would otherwise stop every other's."""
        raw = name.encode() if isinstance(name, str) else name
        digest = hashlib.blake2b(self.schema.encode() + b"\x00" + raw, digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def create_schema(self) -> None:
        with self.connect() as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
