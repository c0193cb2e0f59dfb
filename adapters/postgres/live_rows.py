"""Publishing queue entry rows (queue.event, queue.user) on the change feed, as diffs.

Every waiting entry's position or estimated time can move with any event of its queue, so the
rows of a long queue cannot all be rewritten in every projection transaction. The projector marks
a queue dirty in its transaction (`live_dirty`); this publisher then computes the queue's current
rows, compares them with the rows it last published (`live_rows`), and appends only the
differences to the change feed, with `live_rows` and the dirty mark updated in the same
transaction. It runs on its own thread in the projecting process, woken by each projection round.

Every publication rewrites all of a queue's rows (each estimated time moves with the queue's
latest event), so under load publications are coalesced: a queue is published at most once per
max(`MIN_SPACING`, min(`MAX_SPACING`, W x c / `DUTY`)) seconds, W being the waiting entries of all
dirty queues and c the measured seconds a publication takes per waiting entry (a moving average).
So publishing takes at most about `DUTY` of the time, however many and however long the queues are
and however fast the machine: while a publication writes its feed rows it holds the feed head,
which the projector's summary changes wait for. Measured: republishing five ~500-entry queues after
every round kept the publication statement active in 90 of 150 samples of pg_stat_activity at
1,000 commands/s (2026-12-01); with the rule before this one, a fixed 4,000 waiting entries per
second, PostgreSQL used 7.9 s of CPU in a 10 s run at 100 commands/s on a slower machine (4.6-4.9 s
with this rule), and summary frames waited behind it: commit -> socket p50 18-20 ms, 7-9 ms with
this rule (docs/benchmarks.md). The first change after a quiet spell is published at once (the
spacing counts from the last publication), so a quiet queue's subscribers see it move immediately,
a busy one's at that rate.
Snapshots of these queries read `live_rows`, i.e. exactly what the feed has published.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from adapters.postgres import changes

if TYPE_CHECKING:
    from uuid import UUID

    import psycopg
    from psycopg_pool import ConnectionPool

MIN_SPACING = 0.1  # seconds between two publications of one queue, at least
MAX_SPACING = 10.0  # ... and at most, whatever they cost (a 25k-entry queue still moves every 10 s)
DUTY = 0.1  # the share of the time publications may take
FIRST_COST = 25e-6  # seconds per waiting entry assumed until a publication has been timed

DDL = """
CREATE TABLE IF NOT EXISTS live_rows (
    query text NOT NULL,
    args text NOT NULL,
    key text NOT NULL,
    queue_id uuid NOT NULL,
    ord bigint NOT NULL,
    row jsonb NOT NULL,
    PRIMARY KEY (query, args, key)
);
CREATE INDEX IF NOT EXISTS live_rows_queue ON live_rows (queue_id);
CREATE TABLE IF NOT EXISTS live_dirty (queue_id uuid NOT NULL, position bigint NOT NULL DEFAULT 0);
DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'live_dirty_pkey'
               AND conrelid = to_regclass(quote_ident(current_schema()) || '.live_dirty')) THEN
        ALTER TABLE live_dirty DROP CONSTRAINT live_dirty_pkey;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'live_dirty' AND column_name = 'position') THEN
        ALTER TABLE live_dirty ADD COLUMN position bigint NOT NULL DEFAULT 0;
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS live_dirty_queue ON live_dirty (queue_id);
"""

# A mark is a row per (projection batch, queue) with the log position of the queue's first event in
# the batch, only ever inserted by the projector and deleted by the publication that covers it.
# No unique key on purpose: a batch marking a queue that is being published must not wait for that
# publication (with one row per queue it waited on the row lock of the publisher's DELETE, i.e. for
# the whole publication, and so did that queue's summary frame).


def mark_dirty(queue_ids: str, positions: str) -> str:
    """The insert of marks from two arrays given as SQL expressions: parameters here, the variables of
    `lineup_queues_run` (queues.py), where the queues projection's batches insert theirs."""
    return f"INSERT INTO live_dirty (queue_id, position) SELECT * FROM unnest({queue_ids}, {positions})"  # noqa: S608 - constants


MARK_DIRTY = mark_dirty("%s::uuid[]", "%s::bigint[]")
OLDEST_MARK = "SELECT min(position) AS position FROM live_dirty"

# Publications of entry rows are serialized database-wide, and with `lineup rebuild`'s switch
# (which takes the same lock): two publications of one queue computed from different snapshots
# could otherwise commit in the wrong order and leave an older state on the feed and in live_rows.
# It is the first lock of the transaction, so it is never waited for while holding the feed head.
LOCK = "LOCK TABLE live_rows IN SHARE ROW EXCLUSIVE MODE"

# One statement does the whole publication inside PostgreSQL (no row crosses into Python):
# the queue's rows now, the difference from live_rows, the change-feed rows numbered after the
# moved head, live_rows brought up to date, and the queue's dirty marks cleared: exactly those this
# statement's snapshot sees, i.e. covered by the rows it computed (a mark committed later stays, for
# the next publication). The estimated time is domain.queue.estimated_time
# (latest event + position * average); tests compare these rows with the HTTP answers.
PUBLISH = """
WITH q AS (SELECT queue_id, last_event_at, average_ms FROM queue_summary WHERE queue_id = %(q)s),
live AS (
    SELECT e.entry_id, e.event_id, e.user_id, e.status, e.seq, e.joined_at,
        CASE WHEN e.status = 'waiting'
            THEN row_number() OVER (PARTITION BY e.status = 'waiting' ORDER BY e.seq) END AS position
    FROM queue_entries e WHERE e.queue_id = %(q)s AND e.status IN ('waiting', 'called')),
rowdata AS (
    SELECT l.*, jsonb_build_object(
        'entry_id', l.entry_id, 'event_id', l.event_id, 'user_id', l.user_id, 'position', l.position,
        'estimated_time', q.last_event_at + l.position * q.average_ms, 'status', l.status, 'reason', NULL) AS row
    FROM live l, q),
fresh AS (
    SELECT 'queue.event'::text AS query, event_id AS args, entry_id AS key, seq AS ord, row FROM rowdata
    UNION ALL
    SELECT 'queue.user', user_id, entry_id, joined_at, row FROM rowdata),
old AS (SELECT query, args, key, row FROM live_rows WHERE queue_id = %(q)s),
diff AS (
    SELECT 0 AS kind, o.query, o.args, o.key, 'remove'::text AS op, NULL::jsonb AS row, 0::bigint AS ord
    FROM old o LEFT JOIN fresh f USING (query, args, key) WHERE f.key IS NULL
    UNION ALL
    SELECT 1, f.query, f.args, f.key, 'upsert', f.row, f.ord
    FROM fresh f LEFT JOIN old o USING (query, args, key) WHERE o.row IS DISTINCT FROM f.row),
counted AS (SELECT count(*) AS n FROM diff),
head AS (UPDATE change_feed_head SET cursor = cursor + (SELECT n FROM counted) RETURNING cursor),
feed AS (
    INSERT INTO change_feed (cursor, query, args, key, op, row)
    SELECT head.cursor - (SELECT n FROM counted)
            + row_number() OVER (ORDER BY d.kind, d.query, d.args, d.ord, d.key),
        d.query, d.args, d.key, d.op, d.row
    FROM diff d, head),
removed AS (
    DELETE FROM live_rows l USING diff d
    WHERE d.op = 'remove' AND l.query = d.query AND l.args = d.args AND l.key = d.key),
upserted AS (
    INSERT INTO live_rows (query, args, key, queue_id, ord, row)
    SELECT query, args, key, %(q)s, ord, row FROM diff WHERE op = 'upsert'
    ON CONFLICT (query, args, key) DO UPDATE SET ord = excluded.ord, row = excluded.row),
cleared AS (DELETE FROM live_dirty WHERE queue_id = %(q)s)
SELECT n FROM counted
"""


def publication_spacing(waiting: int, cost: float) -> float:
    """Seconds between two publications of a queue when the dirty queues hold `waiting` entries
    and a publication costs `cost` seconds per entry: publishing them all takes `DUTY` of it."""
    return min(MAX_SPACING, max(MIN_SPACING, waiting * cost / DUTY))


class LiveRowsPublisher:
    """Runs on the projecting process's publisher thread (`ProjectorThread._publish`), beside the rounds."""

    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]]) -> None:
        self.pool = pool
        self._published_at: dict[UUID, float] = {}
        self._held_back: int | None = None
        self.cost = FIRST_COST  # seconds per waiting entry, a moving average over publications

    def __call__(self) -> int:
        """Publish every dirty queue that is due; returns how many changes went on the feed."""
        with self.pool.connection() as conn:
            dirty = conn.execute(
                "SELECT d.queue_id, d.position, s.waiting"
                " FROM (SELECT queue_id, min(position) AS position FROM live_dirty GROUP BY queue_id) d"
                " JOIN queue_summary s ON s.queue_id = d.queue_id ORDER BY d.queue_id"
            ).fetchall()
        spacing = publication_spacing(sum(row["waiting"] for row in dirty), self.cost)
        total, held_back = 0, []
        for row in dirty:
            queue_id = row["queue_id"]
            last = self._published_at.get(queue_id)
            if last is not None and time.monotonic() - last < spacing:
                held_back.append(row["position"])  # stays dirty: a later pass publishes it
                continue
            began = time.monotonic()
            total += self.publish(queue_id)
            self._published_at[queue_id] = done = time.monotonic()
            self.cost += 0.2 * ((done - began) / max(1, row["waiting"]) - self.cost)
        now = time.monotonic()  # forget what no longer holds a queue back: the map stays small
        self._published_at = {q: at for q, at in self._published_at.items() if now - at < spacing}
        self._held_back = min(held_back, default=None)
        return total

    def held_back(self) -> int | None:
        """The lowest log position whose entry rows the last pass left unpublished (None: none):
        a snapshot of these queries reflects the log only up to just before it."""
        return self._held_back

    def publish(self, queue_id: UUID) -> int:
        with self.pool.connection() as conn, conn.transaction():
            conn.execute(LOCK)
            row = conn.execute(PUBLISH, {"q": queue_id}).fetchone()
            count = int(row["n"]) if row else 0
            if count:
                conn.execute(changes.NOTIFY)
            return count
