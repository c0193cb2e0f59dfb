"""Inserting Stripe event states: PostgreSQL's default TOAST compression (pglz) beside lz4.

An event's state (the recorded Stripe body inside eventsourcing's JSON, ~6 KB) is past the TOAST
threshold and compressed inline when it is inserted. The script inserts the same states, in batches
from an array as the event store does, into a scratch table with each compression in turn (alternating,
`--rounds` times) and prints the milliseconds per round, the table's size and the ratio.

    .venv/bin/python scripts/bench/state_compression.py [--rows 5000] [--batch 50] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import time
from pathlib import Path

import psycopg

FIXTURES = Path(os.environ.get("LINEUP_STRIPE_FIXTURES", "/work/shared/stripe-fixtures"))  # as webhooks.py


def state() -> bytes:
    """A recorded Stripe event's state as the event store keeps it."""
    body = (FIXTURES / "payment_intent.succeeded.djstripe-destination-constructed.json").read_text()
    received = {"stripe_id": "evt_x", "type": "payment_intent.succeeded", "created": 1, "payload": body, "at": 1}
    return json.dumps(received).encode()


def insert(
    conn: psycopg.Connection, table: str, compression: str, rows: int, batch: int, base: bytes
) -> tuple[float, int]:
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, state bytea COMPRESSION {compression})")
    started = time.perf_counter()
    for first in range(0, rows, batch):
        states = [base + str(n).encode() for n in range(first, min(rows, first + batch))]  # no two alike
        conn.execute(f"INSERT INTO {table} (state) SELECT s FROM unnest(%b::bytea[]) AS s", (states,))
    elapsed = (time.perf_counter() - started) * 1e3
    size = conn.execute("SELECT pg_total_relation_size(%s)", (table,)).fetchone()
    conn.execute(f"DROP TABLE {table}")
    return elapsed, int(size[0]) if size else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("LINEUP_BENCH_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres",
    )
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=50, help="states per INSERT (one array)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of each compression")
    args = parser.parse_args()
    base = state()
    table = f"bench_state_{secrets.token_hex(4)}"
    times: dict[str, list[float]] = {"pglz": [], "lz4": []}
    sizes: dict[str, int] = {}
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        kinds = conn.execute("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'").fetchone()
        if not kinds or "lz4" not in kinds[0]:
            raise SystemExit("this PostgreSQL was built without lz4: nothing to compare")
        for _ in range(args.rounds):
            for compression, runs in times.items():
                elapsed, sizes[compression] = insert(conn, table, compression, args.rows, args.batch, base)
                runs.append(elapsed)
    pglz, lz4 = statistics.median(times["pglz"]), statistics.median(times["lz4"])
    print(f"{args.rows:,} states of {len(base):,} B, {args.batch} per INSERT, {args.rounds} alternating rounds")
    for compression, runs in times.items():
        runs_ms = " / ".join(f"{ms:.0f}" for ms in runs)
        print(f"  {compression:5} {runs_ms} ms, table {sizes[compression] / 1e6:.1f} MB")
    print(f"  lz4 / pglz time (medians): {lz4 / pglz:.2f}")


if __name__ == "__main__":
    main()
