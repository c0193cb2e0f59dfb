"""Comparing a read model's live tables with rebuilt ones, and switching the live ones to the rebuilt rows.

Everything runs inside PostgreSQL in the caller's transaction: one temporary table per table holds
the differing rows (no row of an equal table crosses into Python), the live table changes only
where it differs, and each change is appended to the change feed as an ordinary `upsert` or
`remove`, so `/ws` subscribers follow the switch exactly, without a reset.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapters.postgres import changes, live_rows

if TYPE_CHECKING:
    import psycopg

    from adapters.postgres.rebuild_tables import Table

MISSING, EXTRA, DIFFERENT = "missing", "extra", "different"  # missing: only the rebuilt model has the row


@dataclass(frozen=True)
class Difference:
    table: str
    key: str
    kind: str
    live: dict[str, Any] | None
    rebuilt: dict[str, Any] | None


def _diff_table(table: Table) -> str:
    return f"rebuild_diff_{table.name}"


def columns(cursor: psycopg.Cursor[Any], schema: str, table: Table) -> list[str]:
    rows = cursor.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
        " ORDER BY ordinal_position",
        (schema, table.name),
    ).fetchall()
    return [row["column_name"] for row in rows]


def compare(  # noqa: PLR0913
    cursor: psycopg.Cursor[Any], live: str, scratch: str, table: Table, cols: list[str], now: int
) -> dict[str, int]:
    """Fill the table's temporary diff table (dropped at commit); returns how many rows of each kind."""
    k, listed = table.key, ", ".join(cols)
    current = table.current.replace("%(now)s", str(int(now)))  # CREATE TABLE AS takes no parameters
    left = ", ".join(f"l.{c}" for c in cols)
    right = ", ".join(f"r.{c}" for c in cols)
    cursor.execute(
        f"""CREATE TEMP TABLE {_diff_table(table)} ON COMMIT DROP AS
        SELECT CASE WHEN l.{k} IS NULL THEN '{MISSING}' WHEN r.{k} IS NULL THEN '{EXTRA}'
                ELSE '{DIFFERENT}' END AS kind,
            coalesce(l.{k}, r.{k}) AS key,
            CASE WHEN l.{k} IS NULL THEN NULL ELSE to_jsonb(l) END AS live,
            CASE WHEN r.{k} IS NULL THEN NULL ELSE to_jsonb(r) END AS rebuilt
        FROM (SELECT {listed} FROM "{live}".{table.name} WHERE {current}) l
        FULL JOIN (SELECT {listed} FROM "{scratch}".{table.name} WHERE {current}) r ON l.{k} = r.{k}
        WHERE l.{k} IS NULL OR r.{k} IS NULL OR ({left}) IS DISTINCT FROM ({right})"""  # noqa: S608 - ours
    )
    cursor.execute(f"ANALYZE {_diff_table(table)}")  # temporary tables get no statistics otherwise
    rows = cursor.execute(f"SELECT kind, count(*) AS n FROM {_diff_table(table)} GROUP BY kind").fetchall()  # noqa: S608
    return {row["kind"]: row["n"] for row in rows}


def differences(cursor: psycopg.Cursor[Any], table: Table) -> list[Difference]:
    """The rows `compare` found, in order (kind, key)."""
    rows = cursor.execute(
        f"SELECT kind, key::text AS key, live, rebuilt FROM {_diff_table(table)} ORDER BY kind, key::text"  # noqa: S608
    ).fetchall()
    return [Difference(table.name, row["key"], row["kind"], row["live"], row["rebuilt"]) for row in rows]


def apply(cursor: psycopg.Cursor[Any], live: str, scratch: str, table: Table, cols: list[str]) -> None:
    """Bring the live table to the rebuilt rows where they differ (deletes first: unique keys)."""
    k, diff, listed = table.key, _diff_table(table), ", ".join(cols)
    cursor.execute(
        f"""DELETE FROM "{live}".{table.name} WHERE {k} IN (SELECT key FROM {diff} WHERE kind = '{EXTRA}')"""  # noqa: S608
    )
    assignments = ", ".join(f"{c} = r.{c}" for c in cols if c != k)
    cursor.execute(
        f"""UPDATE "{live}".{table.name} l SET {assignments} FROM "{scratch}".{table.name} r, {diff} d
        WHERE d.kind = '{DIFFERENT}' AND d.key = r.{k} AND l.{k} = r.{k}"""  # noqa: S608
    )
    cursor.execute(
        f"""INSERT INTO "{live}".{table.name} ({listed}) SELECT {listed} FROM "{scratch}".{table.name}
        WHERE {k} IN (SELECT key FROM {diff} WHERE kind = '{MISSING}')"""  # noqa: S608
    )


def publish(cursor: psycopg.Cursor[Any], live: str, table: Table) -> int:
    """Append the switch's changes of this table to the change feed (search_path: the live schema).

    A row that left a query (deleted, or its argument or key changed) is removed from it; every
    rebuilt row that differed is upserted as the live table now holds it. Returns how many.
    """
    feed = table.feed
    if feed is None:
        return 0
    a, diff = feed.alias, _diff_table(table)
    moved = (
        f"(d.rebuilt->>'{feed.args}', d.rebuilt->>'{feed.key}')"
        f" IS DISTINCT FROM (d.live->>'{feed.args}', d.live->>'{feed.key}')"
    )
    cursor.execute(
        changes.publish(
            f"""SELECT '{feed.query}'::text AS query, d.live->>'{feed.args}' AS args, d.live->>'{feed.key}' AS key,
                'remove'::text AS op, NULL::jsonb AS row, row_number() OVER (ORDER BY d.key) AS ord
            FROM {diff} d WHERE d.live->>'{feed.args}' IS NOT NULL AND (d.rebuilt IS NULL OR {moved})
            UNION ALL
            SELECT '{feed.query}', {a}.{feed.args}::text, {a}.{feed.key}::text, 'upsert', {feed.row},
                1000000000000 + row_number() OVER (ORDER BY d.key)
            FROM {diff} d JOIN "{live}".{table.name} {a} ON {a}.{table.key} = d.key
            WHERE d.rebuilt IS NOT NULL AND {a}.{feed.args} IS NOT NULL"""  # noqa: S608
        )
    )
    return max(cursor.rowcount, 0)


def republish_queues(cursor: psycopg.Cursor[Any], tables: tuple[Table, ...]) -> int:
    """Publish the entry rows (queue.event, queue.user) of every queue the switch touched, as the
    live_rows publisher would (search_path: the live schema). Returns how many changes."""
    sources = " UNION ".join(
        f"SELECT (live->>'queue_id')::uuid AS q FROM {_diff_table(t)}"  # noqa: S608
        f" UNION SELECT (rebuilt->>'queue_id')::uuid FROM {_diff_table(t)}"
        for t in tables
    )
    queue_ids = [row["q"] for row in cursor.execute(f"SELECT q FROM ({sources}) x WHERE q IS NOT NULL ORDER BY q")]  # noqa: S608
    total = 0
    for queue_id in queue_ids:
        total += live_rows.publish(cursor, queue_id)
    return total
