"""Operational facts read from the database: log head, projection positions and lag, change feed, projector."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapters.postgres.changes import ChangeFeed

if TYPE_CHECKING:
    from datetime import datetime

    import psycopg
    from eventsourcing.application import Application
    from psycopg_pool import ConnectionPool


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    position: int
    lag_events: int
    lag_seconds: float


def log_head(app: Application[Any]) -> int:
    return app.recorder.max_notification_id() or 0


def projection_status(
    app: Application[Any], pool: ConnectionPool[psycopg.Connection[Any]], names: list[str], tracking_table: str
) -> tuple[int, list[ProjectionStatus]]:
    """The log head and, per projection, how far behind it is in events and in seconds."""
    head = log_head(app)
    with pool.connection() as conn:
        rows = conn.execute(
            f"SELECT application_name, notification_id FROM {tracking_table} WHERE application_name = ANY(%s)",  # noqa: S608
            (names,),
        ).fetchall()
    positions = {row["application_name"]: row["notification_id"] for row in rows}
    statuses = []
    for name in names:
        position = positions.get(name) or 0
        lag_seconds = 0.0
        if position < head:
            pending = app.recorder.select_notifications(start=position, limit=1, inclusive_of_start=False)
            if pending:
                event: Any = app.mapper.to_domain_event(pending[0])
                written = event.timestamp.timestamp()
                lag_seconds = max(0.0, time.time() - written)
        statuses.append(ProjectionStatus(name, position, max(0, head - position), lag_seconds))
    return head, statuses


@dataclass(frozen=True)
class LockHolder:
    """The session holding an advisory lock: its backend pid, application name and client."""

    pid: int
    application_name: str
    client_addr: str | None  # None: a unix socket
    client_port: int | None
    backend_start: datetime | None


# A bigint advisory key shows in pg_locks as classid (high 32 bits) and objid (low 32 bits), objsubid 1.
HOLDER = """
SELECT a.pid, a.application_name, host(a.client_addr) AS client_addr, a.client_port, a.backend_start
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %(classid)s::bigint::oid AND l.objid = %(objid)s::bigint::oid
"""


def lock_holder(pool: ConnectionPool[psycopg.Connection[Any]], key: int) -> LockHolder | None:
    """Who holds the session-level advisory lock `key` (signed 64 bits) in this database, if anyone."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    with pool.connection() as conn:
        row = conn.execute(HOLDER, {"classid": unsigned >> 32, "objid": unsigned & 0xFFFF_FFFF}).fetchone()
    if row is None:
        return None
    return LockHolder(
        pid=row["pid"],
        application_name=row["application_name"] or "",
        client_addr=row["client_addr"],
        client_port=row["client_port"],
        backend_start=row["backend_start"],
    )


@dataclass(frozen=True)
class Status:
    """Everything `lineup status` reports."""

    head: int
    projections: list[ProjectionStatus]
    change_feed_head: int
    change_feed_oldest: int | None  # None: no change kept
    projector: LockHolder | None


def status(
    app: Application[Any],
    pool: ConnectionPool[psycopg.Connection[Any]],
    names: list[str],
    tracking_table: str,
    projector_key: int,
) -> Status:
    """The log head, each tracked position and its lag, the change feed's bounds, the projector."""
    head, projections = projection_status(app, pool, names, tracking_table)
    feed = ChangeFeed(pool)
    return Status(head, projections, feed.head(), feed.oldest(), lock_holder(pool, projector_key))
