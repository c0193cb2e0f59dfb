"""The queues read model in PostgreSQL: its tables, the writer the projection drives, and its queries."""

from __future__ import annotations

from dataclasses import dataclass, field
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

# A run of entry changes (each entry at most once) as one statement: the joins, calls and finishes
# as set operations, then each queue's summary once: its waiting count moved by the run's deltas
# (joins +1 and calls -1 counted by the writer; a finished entry -1 when it was still waiting,
# which only the row before the statement knows: `prior` is the statement's snapshot), its latest
# average and its latest event time. Key sets arrive as arrays joined with `unnest`.
RUN_CTES = """
joined AS (
    INSERT INTO queue_entries (entry_id, queue_id, event_id, user_id, seq, status, joined_at)
    SELECT j.entry_id, s.queue_id, s.event_id, j.user_id, j.seq, 'waiting', j.at
    FROM unnest(%(j_entry)s::text[], %(j_queue)s::uuid[], %(j_user)s::text[], %(j_seq)s::bigint[],
        %(j_at)s::bigint[]) AS j(entry_id, queue_id, user_id, seq, at)
    JOIN queue_summary s ON s.queue_id = j.queue_id
    ON CONFLICT (entry_id) DO UPDATE SET status = 'waiting', reason = NULL, called_at = NULL,
        finished_at = NULL, seq = excluded.seq, joined_at = excluded.joined_at),
called AS (
    UPDATE queue_entries e SET status = 'called', called_at = c.at
    FROM unnest(%(c_entry)s::text[], %(c_at)s::bigint[]) AS c(entry_id, at)
    WHERE e.entry_id = c.entry_id),
finished AS (
    UPDATE queue_entries e SET status = f.status, reason = f.reason, finished_at = f.at
    FROM unnest(%(f_entry)s::text[], %(f_queue)s::uuid[], %(f_status)s::text[], %(f_reason)s::text[],
        %(f_at)s::bigint[]) AS f(entry_id, queue_id, status, reason, at)
    JOIN queue_entries prior ON prior.entry_id = f.entry_id
    WHERE e.entry_id = f.entry_id
    RETURNING f.queue_id, prior.status AS was),
per_queue AS (
    SELECT queue_id, sum(waiting)::integer AS waiting, max(average_ms) AS average_ms, max(at) AS at FROM (
        SELECT * FROM unnest(%(q_queue)s::uuid[], %(q_waiting)s::integer[], %(q_average)s::bigint[],
            %(q_at)s::bigint[]) AS q(queue_id, waiting, average_ms, at)
        UNION ALL
        SELECT queue_id, -1, NULL, NULL FROM finished WHERE was = 'waiting') AS deltas
    GROUP BY queue_id)"""
SUMMARY_UPDATE = """UPDATE queue_summary s SET waiting = s.waiting + p.waiting,
        average_ms = coalesce(p.average_ms, s.average_ms), last_event_at = coalesce(p.at, s.last_event_at)
    FROM per_queue p WHERE s.queue_id = p.queue_id"""
RUN = f"WITH {RUN_CTES}\n{SUMMARY_UPDATE}"

# The batch's last run, and then every touched queue's summary on the change feed and its entry rows
# marked dirty (see live_rows.py), in one statement.
BATCH_END = changes.publish(
    f"""SELECT 'queue.summary'::text AS query, s.event_id AS args, s.event_id AS key, 'upsert'::text AS op,
        {SUMMARY_ROW} AS row, s.queue_id AS ord FROM summary s""",  # noqa: S608 - constants
    ctes=f"""{RUN_CTES},
summary AS ({SUMMARY_UPDATE} RETURNING s.*),
dirty AS ({live_rows.MARK_DIRTY_NAMED}),""",
)


class PostgresQueuesWriter(QueuesWriter):
    """Applies the projection's changes on one cursor inside the runner's transaction.

    Entry changes (join, call, finish) and averages are held and sent as one set-based statement
    per run (`RUN`): a run ends when an entry comes back or a queue-wide change (open, status,
    close) needs what came before it applied; the batch's last run goes with its feed rows
    (`BATCH_END`). Statements return nothing, so in pipeline mode a whole batch travels in one round
    trip. Per statement, psycopg's Python cost (~50 µs) was most of the projector's GIL time with a
    statement or two per event.
    """

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self.cursor = cursor
        self._touched: dict[UUID, int] = {}  # queue -> its latest event time in this batch
        self._first: dict[UUID, int] = {}  # queue -> the log position of its first event in this batch
        self._run = _Run()

    def _touch(self, queue_id: UUID, at: int) -> None:
        self._touched[queue_id] = at
        self._first.setdefault(queue_id, self.position)

    def _entry(self, entry_id: str) -> _Run:
        """The run an entry change joins: the current one, unless it already changes this entry."""
        if entry_id in self._run.entries:
            self._send_run()
        self._run.entries.add(entry_id)
        return self._run

    def _send_run(self) -> None:
        """Apply the held entry changes now (before a statement that must see them)."""
        if self._run.entries or self._run.queues:
            self.cursor.execute(RUN, self._run.parameters({}), prepare=changes.UNPREPARED)
            self._run = _Run()

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
        self._send_run()
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
        run = self._entry(entry_id)
        run.joined.append((entry_id, queue_id, user_id, seq, at))
        run.waiting(queue_id, +1)
        self._touch(queue_id, at)

    def entry_called(self, queue_id: UUID, entry_id: str, at: int) -> None:
        run = self._entry(entry_id)
        run.called.append((entry_id, at))
        run.waiting(queue_id, -1)
        self._touch(queue_id, at)

    def entry_finished(self, queue_id: UUID, entry_id: str, status: str, reason: str | None, at: int) -> None:
        self._entry(entry_id).finished.append((entry_id, queue_id, status, reason, at))
        self._touch(queue_id, at)

    def average_changed(self, queue_id: UUID, average_ms: int, at: int) -> None:
        self._run.averages[queue_id] = average_ms
        self._run.waiting(queue_id, 0)
        self._touch(queue_id, at)

    def status_changed(self, queue_id: UUID, status: str, at: int) -> None:
        self._send_run()
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
        """Once per batch: the last run, each touched queue's latest event time, its summary on the
        change feed and its entry rows marked dirty, in one statement."""
        if not self._touched:
            return
        for queue_id in self._touched:
            self._run.waiting(queue_id, 0)
        queue_ids = sorted(self._touched)
        marks = {"d_queue": queue_ids, "d_position": [self._first[queue_id] for queue_id in queue_ids]}
        self.cursor.execute(BATCH_END, self._run.parameters(marks, self._touched), prepare=changes.UNPREPARED)
        self.cursor.execute(changes.NOTIFY)
        self._run = _Run()
        self._touched.clear()
        self._first.clear()


@dataclass
class _Run:
    """Entry changes held for one set-based statement (`RUN`), in which each entry appears once."""

    entries: set[str] = field(default_factory=set)
    joined: list[tuple[str, UUID, str, int, int]] = field(default_factory=list)
    called: list[tuple[str, int]] = field(default_factory=list)
    finished: list[tuple[str, UUID, str, str | None, int]] = field(default_factory=list)
    queues: dict[UUID, int] = field(default_factory=dict)  # queue -> waiting delta the writer knows
    averages: dict[UUID, int] = field(default_factory=dict)  # queue -> its latest average

    def waiting(self, queue_id: UUID, delta: int) -> None:
        self.queues[queue_id] = self.queues.get(queue_id, 0) + delta

    def parameters(self, extra: dict[str, Any], at: dict[UUID, int] | None = None) -> dict[str, Any]:
        """The statement's arrays; `at`: each queue's latest event time (the batch's end only)."""
        queue_ids = list(self.queues)
        return {
            **_columns("j_entry j_queue j_user j_seq j_at", self.joined),
            **_columns("c_entry c_at", self.called),
            **_columns("f_entry f_queue f_status f_reason f_at", self.finished),
            "q_queue": queue_ids,
            "q_waiting": [self.queues[queue_id] for queue_id in queue_ids],
            "q_average": [self.averages.get(queue_id) for queue_id in queue_ids],
            "q_at": [at.get(queue_id) if at else None for queue_id in queue_ids],
            **extra,
        }


def _columns(names: str, rows: list[Any]) -> dict[str, list[Any]]:
    """Rows of tuples as one array per column, named in order."""
    keys = names.split()
    columns = [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in keys]
    return dict(zip(keys, columns, strict=True))


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
