"""The scratch schemas a rebuild builds in: claimed per projection, created clean, dropped after.

`<schema>__rb_<projection>` is dropped and created again at the start of every run, so a run
killed with -9 leaves nothing a rerun trips on. Its tables come from the read model's own DDL,
unlogged (nothing there needs to survive a crash) and with keys and constraints only (a bulk COPY
maintains no more). Its `change_feed_head` has no row, so the writers' change-feed statements,
which number their rows after it, add nothing there.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import psycopg

from adapters.postgres import changes, live_rows, rebuild_diff

if TYPE_CHECKING:
    from adapters.postgres.database import Database
    from adapters.postgres.rebuild_tables import Table

CLAIM_WAIT = 5  # seconds a run waits for another run's claim (a just-killed run's session)


class RebuildBusyError(Exception):
    """Another rebuild or verify of the same projection is running."""


def name(schema: str, projection: str) -> str:
    """`<schema>__rb_<projection>`, cut to PostgreSQL's 63 bytes (which would otherwise cut it silently)."""
    return f"{schema}__rb_{projection}"[:63]


def claim(conn: psycopg.Connection[Any], database: Database, projections: list[str]) -> None:
    """One run per projection at a time (a session advisory lock each, held until `conn` closes)."""
    with contextlib.suppress(psycopg.errors.UndefinedObject):  # PostgreSQL < 14 has no such check
        # A run killed while it waits for a lock must not leave its session (and its claim) behind.
        conn.execute("SET client_connection_check_interval = '1s'")
    conn.execute(f"SET lock_timeout = '{CLAIM_WAIT}s'")
    for projection in projections:
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (database.lock_key(f"rebuild:{projection}"),))
        except psycopg.errors.LockNotAvailable:
            msg = f"another rebuild or verify of {projection} is running"
            raise RebuildBusyError(msg) from None
    conn.execute("SET lock_timeout = 0")


def check_migrated(conn: psycopg.Connection[Any], schema: str, tracking_table: str) -> None:
    """UndefinedTable (`lineup migrate` was never run) before anything is created."""
    conn.execute(f'SELECT 1 FROM "{schema}".{tracking_table} LIMIT 0')  # noqa: S608


def create(
    conn: psycopg.Connection[Any], live: str, scratch: str, ddl: str, tables: tuple[Table, ...]
) -> dict[str, list[str]]:
    """The scratch schema, clean; returns the columns of each table (as the live table has them)."""
    conn.execute(f'DROP SCHEMA IF EXISTS "{scratch}" CASCADE')
    conn.execute(f'CREATE SCHEMA "{scratch}"')
    with conn.transaction():
        conn.execute("SELECT set_config('search_path', %s, true)", (f'"{scratch}"',))
        for statements in (ddl, changes.DDL, live_rows.DDL):
            conn.execute(statements.replace("CREATE TABLE", "CREATE UNLOGGED TABLE"))
        conn.execute("DELETE FROM change_feed_head")  # the writers' feed rows go nowhere
        secondary = conn.execute(
            "SELECT c.relname AS indexname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relnamespace = %s::regnamespace"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)",
            (f'"{scratch}"',),
        ).fetchall()
        for index in secondary:
            conn.execute(f'DROP INDEX "{scratch}"."{index["indexname"]}"')
        return {table.name: rebuild_diff.columns(conn.cursor(), live, table) for table in tables}


def enter(conn: psycopg.Connection[Any], scratches: list[str]) -> None:
    """The session writes into the scratch schemas: the writers' table names are unqualified."""
    conn.execute("SELECT set_config('search_path', %s, false)", (", ".join(f'"{s}"' for s in scratches),))
    conn.execute("SET synchronous_commit = off")  # scratch tables: nothing to wait for


def drop(database: Database, scratches: list[str]) -> None:
    try:
        with database.connect() as conn:
            for scratch in scratches:
                conn.execute(f'DROP SCHEMA IF EXISTS "{scratch}" CASCADE')
    except psycopg.Error:
        pass  # the next run drops them first anyway
