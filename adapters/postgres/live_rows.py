"""Publishing queue entry rows (queue.event, queue.user) on the change feed, as diffs.

Every waiting entry's position or estimated time can move with any event of its queue, so the
rows of a long queue cannot all be rewritten in every projection transaction. The projector marks
a queue dirty in its transaction (`live_dirty`); this publisher then computes the queue's current
rows, compares them with the rows it last published (`live_rows`), and appends only the
differences to the change feed, with `live_rows` and the dirty mark updated in the same
transaction. A queue with fewer than `IMMEDIATE` live entries is published right after each
projection batch; a longer one at most once per `INTERVAL` seconds, so its subscribers see it
move at that rate instead of the feed growing by the queue's length on every join.
Snapshots of these queries read `live_rows`, i.e. exactly what the feed has published.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from adapters.postgres import changes
from domain.queue import WAITING, estimated_time

if TYPE_CHECKING:
    from uuid import UUID

    import psycopg
    from psycopg_pool import ConnectionPool

IMMEDIATE = 500
INTERVAL = 1.0

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
CREATE TABLE IF NOT EXISTS live_dirty (queue_id uuid PRIMARY KEY);
"""

MARK_DIRTY = "INSERT INTO live_dirty (queue_id) SELECT unnest(%s::uuid[]) ON CONFLICT DO NOTHING"

FRESH = """
SELECT e.entry_id, e.event_id, e.user_id, e.status, e.seq, e.joined_at, s.last_event_at, s.average_ms,
    CASE WHEN e.status = 'waiting' THEN row_number() OVER (PARTITION BY e.status = 'waiting' ORDER BY e.seq) END
        AS position
FROM queue_entries e JOIN queue_summary s ON s.queue_id = e.queue_id
WHERE e.queue_id = %s AND e.status IN ('waiting', 'called')
ORDER BY e.seq
"""

Key = tuple[str, str, str]


def fresh_rows(conn: psycopg.Connection[Any], queue_id: UUID) -> dict[Key, tuple[int, dict[str, Any]]]:
    """The queue's live rows now, as the HTTP API answers them, for both queries."""
    rows: dict[Key, tuple[int, dict[str, Any]]] = {}
    for e in conn.execute(FRESH, (queue_id,)).fetchall():
        waiting = e["status"] == WAITING
        row = {
            "entry_id": e["entry_id"],
            "event_id": e["event_id"],
            "user_id": e["user_id"],
            "position": e["position"] if waiting else None,
            "estimated_time": estimated_time(e["last_event_at"], e["position"], e["average_ms"]) if waiting else None,
            "status": e["status"],
            "reason": None,
        }
        rows["queue.event", e["event_id"], e["entry_id"]] = (e["seq"], row)
        rows["queue.user", e["user_id"], e["entry_id"]] = (e["joined_at"], row)
    return rows


class LiveRowsPublisher:
    """Runs in the projecting process, after each round of projection batches."""

    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]]) -> None:
        self.pool = pool
        self._published_at: dict[UUID, float] = {}

    def publish_due(self) -> int:
        """Publish every dirty queue that is due; returns how many changes went on the feed."""
        with self.pool.connection() as conn:
            dirty = conn.execute(
                "SELECT d.queue_id, s.waiting FROM live_dirty d JOIN queue_summary s ON s.queue_id = d.queue_id"
            ).fetchall()
        now, total = time.monotonic(), 0
        for row in dirty:
            queue_id = row["queue_id"]
            if row["waiting"] >= IMMEDIATE and now - self._published_at.get(queue_id, 0.0) < INTERVAL:
                continue
            total += self.publish(queue_id)
            self._published_at[queue_id] = now
        return total

    def publish(self, queue_id: UUID) -> int:
        with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
            if not conn.execute("DELETE FROM live_dirty WHERE queue_id = %s RETURNING 1", (queue_id,)).fetchone():
                return 0  # published meanwhile (a previous leader, or a concurrent call)
            fresh = fresh_rows(conn, queue_id)
            old = {
                (r["query"], r["args"], r["key"]): r["row"]
                for r in conn.execute("SELECT query, args, key, row FROM live_rows WHERE queue_id = %s", (queue_id,))
            }
            removed = [key for key in old if key not in fresh]
            changed = [(key, ord_, row) for key, (ord_, row) in fresh.items() if old.get(key) != row]
            feed: list[tuple[str, str, str, str, str | None]] = [(*key, "remove", None) for key in removed]
            feed += [(*key, "upsert", json.dumps(row)) for key, _, row in changed]
            changes.append(cursor, feed)
            cursor.executemany(
                "DELETE FROM live_rows WHERE query = %s AND args = %s AND key = %s", [list(key) for key in removed]
            )
            cursor.executemany(
                "INSERT INTO live_rows (query, args, key, queue_id, ord, row) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (query, args, key) DO UPDATE SET ord = excluded.ord, row = excluded.row",
                [(*key, queue_id, ord_, json.dumps(row)) for key, ord_, row in changed],
            )
            return len(feed)
