"""Operational facts read from the database: log head, projection positions and lag."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
