"""The queues read model in PostgreSQL: its tables, the writer the projection drives, and its queries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapters.postgres import changes, live_rows
from domain.queue import CALLED, CANCELLED, CLOSED, CLOSED_REASON, WAITING, EntryView, estimated_time
from projections.queues import QueuesWriter

if TYPE_CHECKING:
    from uuid import UUID

    import psycopg
    from psycopg_pool import ConnectionPool

TABLES = ("queue_summary", "queue_entries")

DDL = """
CREATE TABLE IF NOT EXISTS queue_summary (
    queue_id uuid PRIMARY KEY,
    event_id text NOT NULL UNIQUE,
    owner_id text NOT NULL,
    name text NOT NULL,
    capacity integer,
    requires_payment boolean NOT NULL,
    status text NOT NULL,
    waiting integer NOT NULL DEFAULT 0,
    average_ms bigint NOT NULL,
    opened_at bigint NOT NULL,
    last_event_at bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS queue_entries (
    entry_id text PRIMARY KEY,
    queue_id uuid NOT NULL,
    event_id text NOT NULL,
    user_id text NOT NULL,
    seq bigint NOT NULL,
    status text NOT NULL,
    reason text,
    joined_at bigint NOT NULL,
    called_at bigint,
    finished_at bigint
);
CREATE INDEX IF NOT EXISTS queue_entries_live ON queue_entries (queue_id, seq)
    WHERE status IN ('waiting', 'called');
CREATE INDEX IF NOT EXISTS queue_entries_waiting ON queue_entries (queue_id, seq) WHERE status = 'waiting';
CREATE INDEX IF NOT EXISTS queue_entries_user ON queue_entries (user_id) WHERE status IN ('waiting', 'called');
"""


# The `queue.summary` row exactly as the HTTP API answers it (for the change feed and snapshots).
SUMMARY_ROW = """jsonb_build_object(
    'event_id', s.event_id, 'name', s.name, 'status', s.status, 'waiting', s.waiting,
    'avg_service_seconds', (s.average_ms / 1000.0)::float8, 'owner_id', s.owner_id,
    'capacity', s.capacity, 'requires_payment', s.requires_payment)"""

# One change per touched queue, numbered after the head that `changes.ADVANCE` has just moved.
SUMMARY_CHANGES = f"""
INSERT INTO change_feed (cursor, query, args, key, op, row)
SELECT h.cursor - %(n)s + row_number() OVER (ORDER BY s.queue_id), 'queue.summary', s.event_id, s.event_id, 'upsert',
    {SUMMARY_ROW}
FROM change_feed_head h, queue_summary s
WHERE s.queue_id = ANY(%(ids)s)
"""  # noqa: S608 - SUMMARY_ROW is a constant


class PostgresQueuesWriter(QueuesWriter):
    """Applies the projection's changes on one cursor inside the runner's transaction.

    Statements return nothing, so in pipeline mode a whole batch travels in one round trip.
    The queue's "latest event time" is written once per queue per batch, in `flush()`.
    """

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self.cursor = cursor
        self._touched: dict[UUID, int] = {}  # queue -> its latest event time in this batch
        self._first: dict[UUID, int] = {}  # queue -> the log position of its first event in this batch

    def _touch(self, queue_id: UUID, at: int) -> None:
        self._touched[queue_id] = at
        self._first.setdefault(queue_id, self.position)

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
        self.cursor.execute(
            "INSERT INTO queue_summary (queue_id, event_id, owner_id, name, capacity, requires_payment,"
            " status, average_ms, opened_at, last_event_at) VALUES (%s, %s, %s, %s, %s, %s, 'open', %s, %s, %s)"
            " ON CONFLICT (queue_id) DO UPDATE SET owner_id = excluded.owner_id, name = excluded.name,"
            " capacity = excluded.capacity, requires_payment = excluded.requires_payment, status = 'open',"
            " waiting = 0, average_ms = excluded.average_ms, opened_at = excluded.opened_at",
            (queue_id, event_id, owner_id, name, capacity, requires_payment, service_ms, at, at),
        )
        self._touch(queue_id, at)

    def entry_joined(self, queue_id: UUID, entry_id: str, user_id: str, seq: int, at: int) -> None:
        self.cursor.execute(
            "INSERT INTO queue_entries (entry_id, queue_id, event_id, user_id, seq, status, joined_at)"
            " SELECT %s, queue_id, event_id, %s, %s, 'waiting', %s FROM queue_summary WHERE queue_id = %s"
            " ON CONFLICT (entry_id) DO UPDATE SET status = 'waiting', reason = NULL, called_at = NULL,"
            " finished_at = NULL, seq = excluded.seq, joined_at = excluded.joined_at",
            (entry_id, user_id, seq, at, queue_id),
        )
        self.cursor.execute("UPDATE queue_summary SET waiting = waiting + 1 WHERE queue_id = %s", (queue_id,))
        self._touch(queue_id, at)

    def entry_called(self, queue_id: UUID, entry_id: str, at: int) -> None:
        self.cursor.execute(
            "UPDATE queue_entries SET status = %s, called_at = %s WHERE entry_id = %s", (CALLED, at, entry_id)
        )
        self.cursor.execute("UPDATE queue_summary SET waiting = waiting - 1 WHERE queue_id = %s", (queue_id,))
        self._touch(queue_id, at)

    def entry_finished(self, queue_id: UUID, entry_id: str, status: str, reason: str | None, at: int) -> None:
        self.cursor.execute(  # before the entry changes: was it still waiting?
            "UPDATE queue_summary SET waiting = waiting - (SELECT count(*) FROM queue_entries"
            " WHERE entry_id = %s AND status = 'waiting') WHERE queue_id = %s",
            (entry_id, queue_id),
        )
        self.cursor.execute(
            "UPDATE queue_entries SET status = %s, reason = %s, finished_at = %s WHERE entry_id = %s",
            (status, reason, at, entry_id),
        )
        self._touch(queue_id, at)

    def average_changed(self, queue_id: UUID, average_ms: int, at: int) -> None:
        self.cursor.execute("UPDATE queue_summary SET average_ms = %s WHERE queue_id = %s", (average_ms, queue_id))
        self._touch(queue_id, at)

    def status_changed(self, queue_id: UUID, status: str, at: int) -> None:
        self.cursor.execute("UPDATE queue_summary SET status = %s WHERE queue_id = %s", (status, queue_id))
        self._touch(queue_id, at)

    def queue_closed(self, queue_id: UUID, at: int) -> None:
        self.status_changed(queue_id, CLOSED, at)
        self.cursor.execute("UPDATE queue_summary SET waiting = 0 WHERE queue_id = %s", (queue_id,))
        self.cursor.execute(
            "UPDATE queue_entries SET status = %s, reason = %s, finished_at = %s WHERE queue_id = %s AND status = %s",
            (CANCELLED, CLOSED_REASON, at, queue_id, WAITING),
        )

    def flush(self) -> None:
        """Once per batch: each touched queue's latest event time, and its summary on the change feed."""
        if not self._touched:
            return
        for queue_id, at in self._touched.items():
            self.cursor.execute("UPDATE queue_summary SET last_event_at = %s WHERE queue_id = %s", (at, queue_id))
        queue_ids = sorted(self._touched)
        self.cursor.execute(changes.ADVANCE, {"n": len(queue_ids)})
        self.cursor.execute(SUMMARY_CHANGES, {"n": len(queue_ids), "ids": queue_ids}, prepare=changes.UNPREPARED)
        self.cursor.execute(changes.NOTIFY)
        marks = [self._first[queue_id] for queue_id in queue_ids]
        self.cursor.execute(live_rows.MARK_DIRTY, (queue_ids, marks))  # their entry rows: see live_rows.py
        self._touched.clear()
        self._first.clear()


class QueuesReader:
    """Queries of the queues read model; positions and times follow the contract's rules."""

    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]]) -> None:
        self.pool = pool

    def summary(self, event_id: str) -> dict[str, Any] | None:
        with self.pool.connection() as conn:
            return conn.execute(
                "SELECT * FROM queue_summary WHERE event_id = %s",
                (event_id,),
            ).fetchone()

    def event_entries(self, queue: dict[str, Any]) -> list[EntryView]:
        """The live list (waiting and called) of the queue, first come first served."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT entry_id, user_id, status FROM queue_entries"
                " WHERE queue_id = %s AND status IN ('waiting', 'called') ORDER BY seq",
                (queue["queue_id"],),
            ).fetchall()
        entries, position = [], 0
        for row in rows:
            if row["status"] == WAITING:
                position += 1
                eta = estimated_time(queue["last_event_at"], position, queue["average_ms"])
                entries.append(EntryView(row["entry_id"], queue["event_id"], row["user_id"], position, eta, WAITING))
            else:
                entries.append(EntryView(row["entry_id"], queue["event_id"], row["user_id"], None, None, CALLED))
        return entries

    def user_entries(self, user_id: str) -> list[EntryView]:
        """The user's active entries in every queue, with position and estimated time."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT e.entry_id, e.event_id, e.status, s.last_event_at, s.average_ms,"
                " CASE WHEN e.status = 'waiting' THEN 1 + (SELECT count(*) FROM queue_entries w"
                "   WHERE w.queue_id = e.queue_id AND w.status = 'waiting' AND w.seq < e.seq) END AS position"
                " FROM queue_entries e JOIN queue_summary s ON s.queue_id = e.queue_id"
                " WHERE e.user_id = %s AND e.status IN ('waiting', 'called') ORDER BY e.joined_at, e.entry_id",
                (user_id,),
            ).fetchall()
        return [
            EntryView(
                row["entry_id"],
                row["event_id"],
                user_id,
                row["position"],
                None
                if row["position"] is None
                else estimated_time(row["last_event_at"], row["position"], row["average_ms"]),
                row["status"],
            )
            for row in rows
        ]
