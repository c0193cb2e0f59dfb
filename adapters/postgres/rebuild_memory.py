"""In-memory twins of the queues and notifications writers, for the bulk of a rebuild.

Statement by statement, a rebuild is bound by PostgreSQL round trips (~2 statements an event);
these twins apply the same changes to rows held in dicts (a few microseconds an event), and
`copy()` writes the resulting rows into the scratch tables with COPY. Each method does exactly
what the SQL of its PostgreSQL writer does, including the cases that change nothing (an entry
of a queue that has no summary row): `verify` compares their rows with the live ones, which
that SQL built, and the e2e tests check the two agree. Stripe events are few: that read model
is always rebuilt with its PostgreSQL writer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from domain.queue import CALLED, CANCELLED, CLOSED, CLOSED_REASON, WAITING
from projections.notifications import NotificationsWriter
from projections.queues import QueuesWriter

if TYPE_CHECKING:
    from collections.abc import Callable
    from uuid import UUID

    import psycopg

SUMMARY_COLUMNS = (
    "queue_id", "event_id", "owner_id", "name", "capacity", "requires_payment", "status", "waiting", "average_ms",
    "opened_at", "last_event_at",
)  # fmt: skip
ENTRY_ALL = (
    "entry_id", "queue_id", "event_id", "user_id", "seq", "status", "reason", "joined_at", "called_at", "finished_at"
)  # fmt: skip
NOTIFICATION_COLUMNS = ("notification_id", "user_id", "type", "data", "created_at", "expires_at", "position")
S = {name: i for i, name in enumerate(SUMMARY_COLUMNS)}
E = {name: i for i, name in enumerate(ENTRY_ALL)}


class MemoryQueuesWriter(QueuesWriter):
    """PostgresQueuesWriter's statements on dicts (rows are lists in SUMMARY_COLUMNS/ENTRY_ALL order)."""

    def __init__(self) -> None:
        self.summaries: dict[UUID, list[Any]] = {}
        self.entries: dict[str, list[Any]] = {}
        self.by_queue: dict[UUID, list[str]] = {}  # entry ids, for queue_closed

    def _touch(self, queue_id: UUID, at: int) -> list[Any] | None:
        summary = self.summaries.get(queue_id)
        if summary is not None:  # flush(): last_event_at = the batch's latest time of the queue
            summary[S["last_event_at"]] = at
        return summary

    def queue_opened(  # noqa: PLR0913
        self,
        queue_id: UUID,
        event_id: str,
        owner_id: str,
        name: str,
        capacity: int | None,
        service_ms: int,
        *,
        requires_payment: bool,
        at: int,
    ) -> None:
        row = self.summaries.get(queue_id)
        if row is None:
            self.summaries[queue_id] = [
                queue_id, event_id, owner_id, name, capacity, requires_payment, "open", 0, service_ms, at, at
            ]  # fmt: skip
        else:  # ON CONFLICT: event_id and last_event_at stay
            row[2:10] = [owner_id, name, capacity, requires_payment, "open", 0, service_ms, at]
        self._touch(queue_id, at)

    def entry_joined(self, queue_id: UUID, entry_id: str, user_id: str, seq: int, at: int) -> None:
        summary = self._touch(queue_id, at)
        if summary is None:
            return  # INSERT ... SELECT FROM queue_summary: nothing
        row = self.entries.get(entry_id)
        if row is None:
            self.entries[entry_id] = [
                entry_id,
                queue_id,
                summary[S["event_id"]],
                user_id,
                seq,
                WAITING,
                None,
                at,
                None,
                None,
            ]
            self.by_queue.setdefault(queue_id, []).append(entry_id)
        else:
            row[E["status"]], row[E["reason"]], row[E["called_at"]], row[E["finished_at"]] = WAITING, None, None, None
            row[E["seq"]], row[E["joined_at"]] = seq, at
        summary[S["waiting"]] += 1

    def entry_called(self, queue_id: UUID, entry_id: str, at: int) -> None:
        row = self.entries.get(entry_id)
        if row is not None:
            row[E["status"]], row[E["called_at"]] = CALLED, at
        summary = self._touch(queue_id, at)
        if summary is not None:
            summary[S["waiting"]] -= 1

    def entry_finished(self, queue_id: UUID, entry_id: str, status: str, reason: str | None, at: int) -> None:
        row = self.entries.get(entry_id)
        summary = self._touch(queue_id, at)
        if summary is not None and row is not None and row[E["status"]] == WAITING:
            summary[S["waiting"]] -= 1
        if row is not None:
            row[E["status"]], row[E["reason"]], row[E["finished_at"]] = status, reason, at

    def average_changed(self, queue_id: UUID, average_ms: int, at: int) -> None:
        summary = self._touch(queue_id, at)
        if summary is not None:
            summary[S["average_ms"]] = average_ms

    def status_changed(self, queue_id: UUID, status: str, at: int) -> None:
        summary = self._touch(queue_id, at)
        if summary is not None:
            summary[S["status"]] = status

    def queue_closed(self, queue_id: UUID, at: int) -> None:
        self.status_changed(queue_id, CLOSED, at)
        summary = self.summaries.get(queue_id)
        if summary is not None:
            summary[S["waiting"]] = 0
        for entry_id in self.by_queue.get(queue_id, []):
            row = self.entries[entry_id]
            if row[E["queue_id"]] == queue_id and row[E["status"]] == WAITING:
                row[E["status"]], row[E["reason"]], row[E["finished_at"]] = CANCELLED, CLOSED_REASON, at

    def flush(self) -> None:
        """Nothing waits: the rows are already what flush() would leave."""

    def copy(self, cursor: psycopg.Cursor[Any]) -> int:
        _copy(cursor, "queue_summary", SUMMARY_COLUMNS, self.summaries.values())
        _copy(cursor, "queue_entries", ENTRY_ALL, self.entries.values())
        return len(self.summaries) + len(self.entries)


class MemoryNotificationsWriter(NotificationsWriter):
    """PostgresNotificationsWriter's INSERT ... ON CONFLICT DO NOTHING on a dict."""

    def __init__(self, ttl_ms: int) -> None:
        self.ttl_ms = ttl_ms
        self.rows: dict[str, tuple[Any, ...]] = {}

    def notification_created(
        self, notification_id: str, user_id: str, kind: str, data: dict[str, Any], at: int
    ) -> None:
        if notification_id not in self.rows:
            row = (notification_id, user_id, kind, Jsonb(data), at, at + self.ttl_ms, self.position)
            self.rows[notification_id] = row

    def flush(self) -> None:
        """Nothing waits."""

    def copy(self, cursor: psycopg.Cursor[Any]) -> int:
        _copy(cursor, "notifications", NOTIFICATION_COLUMNS, self.rows.values())
        return len(self.rows)


def _copy(cursor: psycopg.Cursor[Any], table: str, columns: tuple[str, ...], rows: Any) -> None:
    """Binary COPY with the column types declared: psycopg's C dumpers, no guessing per value."""
    types = cursor.execute(
        "SELECT format_type(a.atttypid, a.atttypmod) AS type FROM pg_attribute a"
        " JOIN unnest(%s::text[]) WITH ORDINALITY AS c(name, ord) ON c.name = a.attname"
        " WHERE a.attrelid = %s::regclass ORDER BY c.ord",
        (list(columns), table),
    ).fetchall()
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types([row["type"] for row in types])
        for row in rows:
            copy.write_row(row)


def memory_writers(ttl_ms: int) -> dict[str, Callable[[], MemoryQueuesWriter | MemoryNotificationsWriter]]:
    """The twins by projection name; notifications expire `ttl_ms` after they are created."""
    return {"queues": MemoryQueuesWriter, "notifications": lambda: MemoryNotificationsWriter(ttl_ms)}
