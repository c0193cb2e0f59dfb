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

TABLES_DDL = """
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

# The summaries the run function collected (its variables `keys` and `summaries`), onto the feed the
# way every writer's rows go (`changes.publish`: numbered after the moved head; no head row, nothing).
PUBLISH_SUMMARIES = changes.publish(
    "SELECT 'queue.summary'::text AS query, u.key AS args, u.key AS key, 'upsert'::text AS op, u.row AS row,"
    " u.ord AS ord FROM unnest(keys, summaries) WITH ORDINALITY AS u(key, row, ord)"
)

# A run of entry changes (each entry at most once) in one call: the joins, calls and finishes, then
# each queue's summary once: its waiting count moved by the run's deltas (joins +1 and calls -1
# counted by the writer; a finished entry -1 when it was still waiting, which only its row knows),
# its latest average and its latest event time. With `publish` (a batch's last run), each summary
# that exists goes on the change feed (numbered after the moved head, in the order given: sorted by
# queue id), the channel is notified, and each queue's entry rows are marked dirty from its first
# position in the batch (see live_rows.py).
#
# A function, not one set-based statement: that statement cost PostgreSQL ~1.9 ms a batch to parse
# and plan (unprepared, as statements joining key sets must be: changes.UNPREPARED). Here every
# statement looks up one key, so the plans PL/pgSQL keeps use the primary keys whatever the table's
# size when they were made.
RUN_FUNCTION = f"""
CREATE OR REPLACE FUNCTION lineup_queues_run(
    j_entry text[], j_queue uuid[], j_user text[], j_seq bigint[], j_at bigint[],
    c_entry text[], c_at bigint[],
    f_entry text[], f_queue uuid[], f_status text[], f_reason text[], f_at bigint[],
    q_queue uuid[], q_waiting integer[], q_average bigint[], q_at bigint[], q_first bigint[], publish boolean
) RETURNS void LANGUAGE plpgsql AS $body$
DECLARE
    i integer;
    k integer;
    was text;
    deltas integer[] := q_waiting;
    summary_key text;
    summary_row jsonb;
    keys text[] := '{{}}';
    summaries jsonb[] := '{{}}';
BEGIN
    FOR i IN 1 .. cardinality(j_entry) LOOP
        INSERT INTO queue_entries (entry_id, queue_id, event_id, user_id, seq, status, joined_at)
        SELECT j_entry[i], s.queue_id, s.event_id, j_user[i], j_seq[i], 'waiting', j_at[i]
        FROM queue_summary s WHERE s.queue_id = j_queue[i]
        ON CONFLICT (entry_id) DO UPDATE SET status = 'waiting', reason = NULL, called_at = NULL,
            finished_at = NULL, seq = excluded.seq, joined_at = excluded.joined_at;
    END LOOP;
    FOR i IN 1 .. cardinality(c_entry) LOOP
        UPDATE queue_entries SET status = 'called', called_at = c_at[i] WHERE entry_id = c_entry[i];
    END LOOP;
    FOR i IN 1 .. cardinality(f_entry) LOOP
        SELECT e.status INTO was FROM queue_entries e WHERE e.entry_id = f_entry[i];
        UPDATE queue_entries SET status = f_status[i], reason = f_reason[i], finished_at = f_at[i]
        WHERE entry_id = f_entry[i];
        IF was = 'waiting' THEN
            k := array_position(q_queue, f_queue[i]);
            deltas[k] := deltas[k] - 1;
        END IF;
    END LOOP;
    FOR i IN 1 .. cardinality(q_queue) LOOP
        UPDATE queue_summary s SET waiting = s.waiting + deltas[i],
            average_ms = coalesce(q_average[i], s.average_ms), last_event_at = coalesce(q_at[i], s.last_event_at)
        WHERE s.queue_id = q_queue[i]
        RETURNING s.event_id, {SUMMARY_ROW} INTO summary_key, summary_row;
        IF FOUND AND publish THEN
            keys := keys || summary_key;
            summaries := summaries || summary_row;
        END IF;
    END LOOP;
    IF NOT publish THEN
        RETURN;
    END IF;
    {live_rows.mark_dirty("q_queue", "q_first")};
    IF cardinality(keys) > 0 THEN{PUBLISH_SUMMARIES};
        PERFORM{changes.NOTIFY.removeprefix("SELECT")};
    END IF;
END
$body$;
"""  # noqa: S608 - constants only
RUN = (
    "SELECT lineup_queues_run(%(j_entry)b, %(j_queue)b, %(j_user)b, %(j_seq)b, %(j_at)b, %(c_entry)b, %(c_at)b,"
    " %(f_entry)b, %(f_queue)b, %(f_status)b, %(f_reason)b, %(f_at)b,"
    " %(q_queue)b, %(q_waiting)b, %(q_average)b, %(q_at)b, %(q_first)b, %(publish)s)"
)
DDL = TABLES_DDL + RUN_FUNCTION


class PostgresQueuesWriter(QueuesWriter):
    """Applies the projection's changes on one cursor inside the runner's transaction.

    Entry changes (join, call, finish) and averages are held and sent as one call of
    `lineup_queues_run` per run (`RUN`): a run ends when an entry comes back or a queue-wide change
    (open, status, close) needs what came before it applied; the batch's last run also publishes the
    summaries. Statements return nothing, so in pipeline mode a whole batch travels in one round
    trip. Per statement, psycopg's Python cost (~50 µs) was most of the projector's GIL time when
    each event sent a statement or two.
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
            self.cursor.execute(RUN, self._run.parameters())
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
        run = self._entry(entry_id)
        run.finished.append((entry_id, queue_id, status, reason, at))
        run.waiting(queue_id, 0)  # the call counts -1 there if the entry was waiting
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
        change feed and its entry rows marked dirty, in one call."""
        if not self._touched:
            return
        self.cursor.execute(RUN, self._run.parameters(self._touched, self._first))
        self._run = _Run()
        self._touched.clear()
        self._first.clear()


@dataclass
class _Run:
    """Entry changes held for one call (`RUN`), in which each entry appears once."""

    entries: set[str] = field(default_factory=set)
    joined: list[tuple[str, UUID, str, int, int]] = field(default_factory=list)
    called: list[tuple[str, int]] = field(default_factory=list)
    finished: list[tuple[str, UUID, str, str | None, int]] = field(default_factory=list)
    queues: dict[UUID, int] = field(default_factory=dict)  # queue -> waiting delta the writer knows
    averages: dict[UUID, int] = field(default_factory=dict)  # queue -> its latest average

    def waiting(self, queue_id: UUID, delta: int) -> None:
        self.queues[queue_id] = self.queues.get(queue_id, 0) + delta

    def parameters(self, at: dict[UUID, int] | None = None, first: dict[UUID, int] | None = None) -> dict[str, Any]:
        """The call's arguments. At the batch's end: `at`, each touched queue's latest event time,
        and `first`, its first log position in the batch; every touched queue is then published."""
        queues = self.queues if at is None else {queue_id: self.queues.get(queue_id, 0) for queue_id in at}
        queue_ids = sorted(queues)
        return {
            **changes.columns("j_entry j_queue j_user j_seq j_at", self.joined),
            **changes.columns("c_entry c_at", self.called),
            **changes.columns("f_entry f_queue f_status f_reason f_at", self.finished),
            "q_queue": queue_ids,
            "q_waiting": [queues[queue_id] for queue_id in queue_ids],
            "q_average": [self.averages.get(queue_id) for queue_id in queue_ids],
            "q_at": [at[queue_id] if at else None for queue_id in queue_ids],
            "q_first": [first[queue_id] if first else None for queue_id in queue_ids],
            "publish": at is not None,
        }


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
