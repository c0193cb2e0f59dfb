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
After each publication the publisher rests for (1 - `DUTY`) / `DUTY` times as long as it took, so
publishing takes at most about `DUTY` of the time over any stretch, however many and however long
the queues are and however fast the machine; and a publication appends its changes in chunks of
`CHUNK`, each in its own transaction, because while a transaction appends to the feed it holds the
feed head, which the projector's summary changes wait for. Measured: republishing five ~500-entry
queues after every round kept the publication statement active in 90 of 150 samples of
pg_stat_activity at 1,000 commands/s (2026-12-01); with the rule before the spacing, a fixed 4,000
waiting entries per second, PostgreSQL used 7.9 s of CPU in a 10 s run at 100 commands/s on a
slower machine (4.6-4.9 s with it), and summary frames waited behind it: commit -> socket p50
18-20 ms, 7-9 ms with the spacing (docs/benchmarks.md). The first change after a quiet spell is
published at once (the spacing counts from the last publication), so a quiet queue's subscribers
see it move immediately, a busy one's at that rate.
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

    from adapters.postgres.database import Database

MIN_SPACING = 0.1  # seconds between two publications of one queue, at least
MAX_SPACING = 10.0  # ... and at most, whatever they cost (a 25k-entry queue still moves every 10 s)
DUTY = 0.1  # the share of the time publications may take
FIRST_COST = 25e-6  # seconds per waiting entry assumed until a publication has been timed
# A publication of fewer waiting entries is timed as if it had this many: its time is then mostly
# the fixed cost of its statements and commits, and divided by its few entries it made the per-entry
# estimate jump (a 1-entry queue's first publication counted all of that as the cost of one entry):
# the same queue, 350 entries later, could then be spaced seconds apart, and a snapshot waiting for
# its rows (read-your-writes, 2 s) went out without them (tests/e2e/test_ws_slow.py, in a fresh clone).
COST_FLOOR = 100

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
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE oid = to_regclass(quote_ident(current_schema()) || '.live_rows')
                   AND 'fillfactor=50' = ANY(reloptions)) THEN
        ALTER TABLE live_rows SET (fillfactor = 50);
    END IF;
END $$;
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
CREATE INDEX IF NOT EXISTS live_dirty_queue_position ON live_dirty (queue_id, position);
DROP INDEX IF EXISTS live_dirty_queue;
CREATE UNLOGGED TABLE IF NOT EXISTS live_publication (
    seq bigint PRIMARY KEY, query text NOT NULL, args text NOT NULL, key text NOT NULL, op text NOT NULL,
    row jsonb, ord bigint NOT NULL
);
"""

# live_rows is filled to half of each page: a publication updates every row of a queue (each estimated
# time moves), and with room on the page PostgreSQL updates a row in place of the page (a HOT update:
# neither index is touched), pruning the old versions as it goes, also without autovacuum. Measured
# with scripts/bench/publication.py --entries 3000: a republication 124.5 / 129.8 ms, 96.5 / 92.7 ms
# half-filled (2026-12-01).
#
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

# The dirty queues, each with its oldest mark and its waiting entries. The publisher asks after every
# projection round, ~150 times a second at 1,000 commands/s, while the marks pile up between a long
# queue's publications (one per batch and queue): grouping them all took 1.7 ms a time, a quarter of
# a core of PostgreSQL. This walks the (queue_id, position) index from one dirty queue to the next
# instead, one probe per dirty queue, however many marks each has.
DIRTY = """
WITH RECURSIVE d AS (
    (SELECT queue_id, position FROM live_dirty ORDER BY queue_id, position LIMIT 1)
    UNION ALL
    SELECT n.queue_id, n.position FROM d, LATERAL (
        SELECT queue_id, position FROM live_dirty WHERE queue_id > d.queue_id ORDER BY queue_id, position LIMIT 1
    ) n
)
SELECT d.queue_id, d.position, s.waiting FROM d JOIN queue_summary s ON s.queue_id = d.queue_id
"""

# Publications of entry rows are serialized database-wide, and with `lineup rebuild`'s switch, by
# a session advisory lock on this name (`Database.lock_key`): a publication spans transactions (see
# below), and two publications of one queue computed from different snapshots could otherwise
# commit in the wrong order and leave an older state on the feed and in live_rows. The switch takes
# it (for its transaction) before its table locks, so neither ever waits for the other while
# holding what the other needs.
PUBLICATIONS = "live_rows publications"
CHUNK = 500  # changes appended per transaction: the feed head is held ~5 ms, not for a whole queue

# A publication stages its changes first and then appends them in chunks of `CHUNK` changes, each
# chunk with its live_rows writes in one transaction, so that the feed head, which every other writer
# of the feed waits for (the projector's summary changes above all), is never held for long. As one
# statement, a ~3,000-entry queue's publication (6,000 changes) held the head for 72-140 ms; staged
# and appended at once, for the 20-45 ms of the append and commit: the summary frames behind it
# missed 25 ms by far either way (commit -> socket p99 39-83 ms at 1,000 commands/s, 20 ms with
# publications held back; docs/benchmarks.md, the section of 2026-12-01 17:33).
#
# Every chunk leaves live_rows and the feed as one: a snapshot (which reads live_rows) between two
# chunks shows exactly the state a client has after applying the feed up to that cursor, one change
# frame at a time. The queue's dirty marks that the staging saw are cleared with the last chunk; a
# mark committed later (its position is higher: the projector marks in log order) stays for the
# next publication, which publishes what moved after the staging.
#
# STAGE, inside PostgreSQL (no row crosses into Python): the queue's rows now, the difference from
# live_rows, numbered in publication order (`seq`) in the `live_publication` scratch table (leftovers
# of a publication that failed half-way are dropped first: it is published again, as its marks
# stayed). The estimated time is domain.queue.estimated_time (latest event + position * average);
# tests compare these rows with the HTTP answers. The scratch table is unlogged: nothing in it
# survives a crash or needs to.
CLEAR_LEFTOVERS = "DELETE FROM live_publication"
STAGE = """
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
staged AS (
    INSERT INTO live_publication (seq, query, args, key, op, row, ord)
    SELECT row_number() OVER (ORDER BY kind, query, args, ord, key), query, args, key, op, row, ord FROM diff
    RETURNING 1)
SELECT (SELECT count(*) FROM staged) AS n,
    (SELECT max(position) FROM live_dirty WHERE queue_id = %(q)s) AS marked
"""

# The next `size` staged changes: onto live_rows and the feed (numbered after the moved head).
APPEND = changes.publish(
    "SELECT query, args, key, op, row, seq AS ord FROM chunk",
    """chunk AS (
    DELETE FROM live_publication WHERE seq < (SELECT min(seq) FROM live_publication) + %(size)s RETURNING *),
removed AS (
    DELETE FROM live_rows l USING chunk c
    WHERE c.op = 'remove' AND l.query = c.query AND l.args = c.args AND l.key = c.key),
upserted AS (
    INSERT INTO live_rows (query, args, key, queue_id, ord, row)
    SELECT query, args, key, %(q)s, ord, row FROM chunk WHERE op = 'upsert'
    ON CONFLICT (query, args, key) DO UPDATE SET ord = excluded.ord, row = excluded.row),""",
)
CLEAR = "DELETE FROM live_dirty WHERE queue_id = %(q)s AND position <= %(marked)s"


def publish(cursor: psycopg.Cursor[Any], queue_id: UUID) -> int:
    """Publish a queue's entry rows whole in the caller's transaction, which holds the `PUBLICATIONS`
    lock (the rebuild's switch); returns how many changes went on the feed (the caller sends
    `changes.NOTIFY` when there were any)."""
    staged, marked = _stage(cursor, queue_id)
    _append(cursor, queue_id, staged, marked, size=staged)
    return staged


def _stage(cursor: psycopg.Cursor[Any], queue_id: UUID) -> tuple[int, int | None]:
    """How many changes the queue's publication staged, and its newest dirty mark then."""
    cursor.execute(CLEAR_LEFTOVERS)
    row = cursor.execute(STAGE, {"q": queue_id}).fetchone()
    return (int(row["n"]), row["marked"]) if row else (0, None)


def _append(cursor: psycopg.Cursor[Any], queue_id: UUID, left: int, marked: int | None, size: int) -> int:
    """The next `size` of the `left` staged changes onto live_rows and the feed; with the last, the
    marks the staging saw are cleared. Returns how many are left."""
    if left:
        cursor.execute(APPEND, {"q": queue_id, "size": size})
        left = max(0, left - size)
    if not left and marked is not None:
        cursor.execute(CLEAR, {"q": queue_id, "marked": marked})
    return left


def publication_spacing(waiting: int, cost: float) -> float:
    """Seconds between two publications of a queue when the dirty queues hold `waiting` entries
    and a publication costs `cost` seconds per entry: publishing them all takes `DUTY` of it."""
    return min(MAX_SPACING, max(MIN_SPACING, waiting * cost / DUTY))


def next_cost(cost: float, seconds: float, waiting: int) -> float:
    """The per-entry cost estimate after a publication of `waiting` entries took `seconds`: a
    moving average, each publication counting as if it had at least `COST_FLOOR` entries."""
    return cost + 0.2 * (seconds / max(COST_FLOOR, waiting) - cost)


class LiveRowsPublisher:
    """Runs on the projecting process's publisher thread (`ProjectorThread._publish`), beside the rounds."""

    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]], database: Database) -> None:
        self.pool, self.lock_key = pool, database.lock_key(PUBLICATIONS)
        self._published_at: dict[UUID, float] = {}
        self._held_back: int | None = None
        self._last = (0.0, 0.0)  # monotonic times the last publication began and ended
        self.cost = FIRST_COST  # seconds per waiting entry, a moving average over publications

    def __call__(self) -> int:
        """Publish the dirty queues that are due, longest unpublished first, as far as the duty allows;
        returns how many changes went on the feed."""
        with self.pool.connection() as conn:
            dirty = conn.execute(DIRTY).fetchall()
        spacing = publication_spacing(sum(row["waiting"] for row in dirty), self.cost)
        total, held_back = 0, []
        for row in sorted(dirty, key=lambda row: self._published_at.get(row["queue_id"], 0.0)):
            queue_id = row["queue_id"]
            last = self._published_at.get(queue_id)
            now = time.monotonic()
            if (last is not None and now - last < spacing) or now < self._resting_until():
                held_back.append(row["position"])  # stays dirty: a later pass publishes it
                continue
            began = time.monotonic()
            total += self.publish(queue_id)
            self._published_at[queue_id] = done = time.monotonic()
            self._last = (began, done)
            self.cost = next_cost(self.cost, done - began, row["waiting"])
        now = time.monotonic()  # forget what no longer holds a queue back: the map stays small
        self._published_at = {q: at for q, at in self._published_at.items() if now - at < spacing}
        self._held_back = min(held_back, default=None)
        return total

    def _resting_until(self) -> float:
        """No publication starts before the last one's time has been made up for by a rest, so that
        publishing takes at most `DUTY` of the time over any stretch, not only on average: long
        queues falling due together were published back to back, ten 6,000-change publications of
        70-140 ms each (PostgreSQL on a core for a second), and every command's summary frame
        meanwhile waited for the CPU and for the feed head (p99 50-80 ms in those seconds)."""
        began, done = self._last
        return done + (done - began) * (1 - DUTY) / DUTY

    def held_back(self) -> int | None:
        """The lowest log position whose entry rows the last pass left unpublished (None: none):
        a snapshot of these queries reflects the log only up to just before it."""
        return self._held_back

    def publish(self, queue_id: UUID) -> int:
        """Publish one queue's entry rows in chunks (see `CHUNK`); returns how many changes."""
        with self.pool.connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (self.lock_key,))
            try:
                return self._publish(conn, queue_id)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (self.lock_key,))

    def _publish(self, conn: psycopg.Connection[Any], queue_id: UUID) -> int:
        with conn.transaction(), conn.cursor() as cursor:  # staging, and the first chunk
            staged, marked = _stage(cursor, queue_id)
            left = _append_chunk(cursor, queue_id, staged, marked)
        while left:
            with conn.transaction(), conn.cursor() as cursor:
                left = _append_chunk(cursor, queue_id, left, marked)
        return staged


def _append_chunk(cursor: psycopg.Cursor[Any], queue_id: UUID, left: int, marked: int | None) -> int:
    """`_append` of the next `CHUNK` changes, announced to the followers."""
    rest = _append(cursor, queue_id, left, marked, size=CHUNK)
    if left:
        cursor.execute(changes.NOTIFY)
    return rest
