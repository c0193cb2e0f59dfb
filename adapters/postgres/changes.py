"""The change feed: read-model row changes under one global, commit-ordered cursor.

A `bigserial` is not commit-ordered: two transactions take 7 and 8, 8 commits first, a reader
paging `cursor > 6` sees 8, moves its mark past 7, and never sees 7. Here every transaction that
appends changes first moves the single `change_feed_head` row forward by the number of changes it
writes; the row lock it takes is held until commit, so the next writer gets its cursors only
after this one has committed (or rolled back). Commit order equals cursor order, and a reader that
pages by cursor never skips a change. The statements return nothing, so they travel in the
projection's pipeline with the rest of its batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

CHANNEL = "lineup_changes"

DDL = """
CREATE TABLE IF NOT EXISTS change_feed_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    cursor bigint NOT NULL
);
INSERT INTO change_feed_head (singleton, cursor) VALUES (true, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS change_feed (
    cursor bigint PRIMARY KEY,
    query text NOT NULL,
    args text NOT NULL,
    key text NOT NULL,
    op text NOT NULL CHECK (op IN ('upsert', 'remove')),
    row jsonb,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS change_feed_recorded_at ON change_feed (recorded_at);
"""

# Moves the head by %(n)s; the INSERT ... SELECT that follows reads the moved head in the same
# transaction and numbers its rows head - n + 1 ... head.
ADVANCE = "UPDATE change_feed_head SET cursor = cursor + %(n)s"
NOTIFY = "SELECT pg_notify('lineup_changes', cursor::text) FROM change_feed_head"
HEAD = "SELECT cursor FROM change_feed_head"
OLDEST = "SELECT min(cursor) AS oldest FROM change_feed"
COLUMNS = "SELECT cursor, query, args, key, op, row FROM change_feed"
PAGE = COLUMNS + " WHERE cursor > %s ORDER BY cursor LIMIT %s"  # every query's changes, after a cursor


# Statements that look rows up by a set of keys (`= ANY(%s)`) run unprepared (`prepare=False`), so
# PostgreSQL plans each execution for its keys and the table as it is now. Prepared, psycopg makes
# them server-side statements after 5 runs and PostgreSQL soon keeps one generic plan, made while
# the table was small: a sequential scan, kept for the life of the connection unless an ANALYZE
# invalidates it (never, with autovacuum off). Measured (auto_explain, 1,000 webhooks/s): the
# payments and notifications lookups seq-scanned ~5,000 rows in every projection round, 4.3 ms a
# statement and growing with the tables; each round publishes a few dozen keys.
UNPREPARED = False


def publish(select: str, ctes: str = "") -> str:
    """One statement that appends the rows of `select` (columns query, args, key, op, row, ord) to
    the feed, numbered by `ord` right after the head, and moves the head past exactly them: no
    gap, so a reader waiting for the head's cursor is never left waiting for a change that does
    not exist. `ctes` may define what `select` reads (e.g. a DELETE ... RETURNING). Returns
    nothing, so it travels in a pipeline; its row count is the number of changes."""
    return f"""
WITH {ctes} new AS ({select}),
counted AS (SELECT count(*) AS n FROM new),
head AS (UPDATE change_feed_head SET cursor = cursor + (SELECT n FROM counted) RETURNING cursor)
INSERT INTO change_feed (cursor, query, args, key, op, row)
SELECT head.cursor - counted.n + row_number() OVER (ORDER BY new.ord), new.query, new.args, new.key, new.op, new.row
FROM new, head, counted
"""  # noqa: S608 - `select` is one of the writers' constant statements


_encode = msgspec.json.Encoder().encode


def json_text(value: Any) -> str:
    """A value as JSON text: an element of a `jsonb[]` array parameter (`columns`)."""
    return _encode(value).decode()


def columns(names: str, rows: list[Any]) -> dict[str, list[Any]]:
    """Rows of tuples as one array per column, named in order: the parameters of a statement that
    writes a batch's rows from arrays (`unnest`)."""
    keys = names.split()
    arrays = [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in keys]
    return dict(zip(keys, arrays, strict=True))


def append(cursor: psycopg.Cursor[Any], changes: list[tuple[str, str, str, str, str | None]]) -> None:
    """Append (query, args, key, op, row json) changes in the caller's transaction, in order."""
    if not changes:
        return
    queries, args, keys, ops, rows = (list(column) for column in zip(*changes, strict=True))
    cursor.execute(ADVANCE, {"n": len(changes)})
    cursor.execute(
        "INSERT INTO change_feed (cursor, query, args, key, op, row)"
        " SELECT h.cursor - %(n)s + c.ord, c.query, c.args, c.key, c.op, c.row::jsonb"
        " FROM change_feed_head h,"
        " unnest(%(queries)s::text[], %(args)s::text[], %(keys)s::text[], %(ops)s::text[], %(rows)s::text[])"
        " WITH ORDINALITY AS c(query, args, key, op, row, ord)",
        {"n": len(changes), "queries": queries, "args": args, "keys": keys, "ops": ops, "rows": rows},
    )
    cursor.execute(NOTIFY)


KEEP_HOURS = 24  # the contract's minimum for exact resumes; older cursors get a reset snapshot


def trim(pool: ConnectionPool[psycopg.Connection[Any]], keep_hours: float = KEEP_HOURS) -> int:
    """Delete changes older than `keep_hours`; returns how many went."""
    with pool.connection() as conn:
        cursor = conn.execute(
            "DELETE FROM change_feed WHERE recorded_at < now() - make_interval(secs => %s)", (keep_hours * 3600,)
        )
        return cursor.rowcount


class ChangeFeed:
    """Reading the feed: its head, the oldest change kept, and pages after a cursor."""

    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]]) -> None:
        self.pool = pool

    def head(self) -> int:
        with self.pool.connection() as conn:
            row = conn.execute(HEAD).fetchone()
        return int(row["cursor"]) if row else 0

    def oldest(self) -> int | None:
        with self.pool.connection() as conn:
            row = conn.execute(OLDEST).fetchone()
        return row["oldest"] if row else None

    def after(self, cursor: int, limit: int = 1000) -> list[dict[str, Any]]:
        """Changes with a greater cursor, oldest first."""
        with self.pool.connection() as conn:
            return conn.execute(PAGE, (cursor, limit)).fetchall()
