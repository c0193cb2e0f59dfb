"""The notifications read model in PostgreSQL: table, writer, queries and the expiry clean-up."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from adapters.postgres import changes
from projections.notifications import NotificationsWriter

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

TABLES = ("notifications",)

# `position` is the log position of the event that caused the row: rows of one batch share
# `created_at`, and `(created_at, position)` lists them in the order their events happened.
# Tables created before it existed get the column (0 until `lineup rebuild notifications`); the
# ALTER runs only when it is missing, since even ADD COLUMN IF NOT EXISTS takes an ACCESS EXCLUSIVE
# lock, and this runs at every start.
DDL = """
CREATE TABLE IF NOT EXISTS notifications (
    notification_id text PRIMARY KEY,
    user_id text NOT NULL,
    type text NOT NULL,
    data jsonb NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    position bigint NOT NULL DEFAULT 0
);
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'notifications' AND column_name = 'position') THEN
        ALTER TABLE notifications ADD COLUMN IF NOT EXISTS position bigint NOT NULL DEFAULT 0;
    END IF;
END $$;
DROP INDEX IF EXISTS notifications_user;
CREATE INDEX IF NOT EXISTS notifications_user_order
    ON notifications (user_id, created_at, position, notification_id);
CREATE INDEX IF NOT EXISTS notifications_expiry ON notifications (expires_at);
"""

# The notification exactly as HTTP answers it (feed, snapshots and the HTTP handler all use it).
ROW = """jsonb_build_object('notification_id', n.notification_id, 'user_id', n.user_id, 'type', n.type,
    'data', n.data, 'created_at', n.created_at, 'expires_at', n.expires_at)"""

# A batch's notifications inserted from arrays, and those new to the table put on the feed, in one
# statement: the writer sent an INSERT per notification, and at 1,000 webhooks/s psycopg's pipeline
# sends (a syscall per statement) were a quarter of the projector process's GIL time (py-spy). An
# id already stored (ON CONFLICT DO NOTHING) makes no change. Its lookups are by primary key whatever
# the plan, so it can be prepared.
INSERT = changes.publish(
    f"""SELECT 'notifications.user'::text AS query, n.user_id AS args, n.notification_id AS key,
        'upsert'::text AS op, {ROW} AS row,
        row_number() OVER (ORDER BY n.created_at, n.position, n.notification_id) AS ord
    FROM n""",  # noqa: S608 - constants
    ctes="""n AS (
        INSERT INTO notifications (notification_id, user_id, type, data, created_at, expires_at, position)
        SELECT * FROM unnest(%(ids)b::text[], %(users)b::text[], %(kinds)b::text[], %(data)b::jsonb[],
            %(created)b::bigint[], %(expires)b::bigint[], %(positions)b::bigint[])
        ON CONFLICT (notification_id) DO NOTHING
        RETURNING *),""",
)

# Unexpired rows of one user created at or after `since`, oldest first, those of one time in log order
# (HTTP and /ws snapshots).
FOR_USER = f"""SELECT n.notification_id AS key, {ROW} AS row FROM notifications n
    WHERE n.user_id = %(arg)s AND n.created_at >= %(since)s AND n.expires_at > %(now)s
    ORDER BY n.created_at, n.position, n.notification_id"""  # noqa: S608 - constants

EXPIRE = changes.publish(
    """SELECT 'notifications.user'::text AS query, d.user_id AS args, d.notification_id AS key,
        'remove'::text AS op, NULL::jsonb AS row, row_number() OVER (ORDER BY d.notification_id) AS ord
    FROM d""",
    ctes="d AS (DELETE FROM notifications WHERE expires_at <= %(now)s RETURNING notification_id, user_id),",
)


def epoch_ms() -> int:
    return time.time_ns() // 1_000_000


class PostgresNotificationsWriter(NotificationsWriter):
    """Holds the batch's notifications; `flush()` inserts them and puts them on the change feed, in
    the runner's transaction."""

    def __init__(self, cursor: psycopg.Cursor[Any], ttl_ms: int) -> None:
        self.cursor, self.ttl_ms = cursor, ttl_ms
        self._rows: list[tuple[str, str, str, str, int, int, int]] = []

    def notification_created(
        self, notification_id: str, user_id: str, kind: str, data: dict[str, Any], at: int
    ) -> None:
        row = (notification_id, user_id, kind, changes.json_text(data), at, at + self.ttl_ms, self.position)
        self._rows.append(row)

    def flush(self) -> None:
        if not self._rows:
            return
        self.cursor.execute(INSERT, changes.columns("ids users kinds data created expires positions", self._rows))
        self.cursor.execute(changes.NOTIFY)
        self._rows = []


class NotificationsReader:
    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]]) -> None:
        self.pool = pool

    def for_user(self, user_id: str, since: int = 0, now: int | None = None) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            rows = conn.execute(FOR_USER, {"arg": user_id, "since": since, "now": now or epoch_ms()}).fetchall()
        return [row["row"] for row in rows]


def delete_expired(pool: ConnectionPool[psycopg.Connection[Any]], now: int | None = None) -> int:
    """Delete every expired notification, telling subscribers (`remove`); returns how many went."""
    with pool.connection() as conn, conn.transaction():
        cursor = conn.execute(EXPIRE, {"now": now or epoch_ms()}, prepare=changes.UNPREPARED)
        removed = cursor.rowcount
        if removed:
            conn.execute(changes.NOTIFY)
    return removed
