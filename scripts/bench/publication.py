"""One queue's entry rows republished (adapters/postgres/live_rows.py): what a publication costs.

On a fresh schema of --database-url (dropped at the end), a queue gets --entries joins; its rows are
published once; then, --rounds times, one more join is projected and the queue is republished
(every row's estimated time moves with the queue's latest event, so every row changes). Prints the
wall time of each republication, the median, and the median per waiting entry: the `c` the
publisher measures for itself to space publications (`live_rows.publication_spacing`).

    .venv/bin/python scripts/bench/publication.py [--entries 1000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psycopg

from adapters.postgres import live_rows
from domain.commands import Caller, JoinQueue, OpenQueue
from domain.queue import queue_id_for
from entrypoints.bootstrap import build
from entrypoints.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--entries", type=int, default=1000, help="waiting entries in the queue")
    parser.add_argument("--rounds", type=int, default=7, help="republications timed")
    args = parser.parse_args()
    schema = f"bench_pub_{secrets.token_hex(5)}"
    settings = Settings(database_url=args.database_url, database_schema=schema, jwt_secret="x" * 40, pool_size=4)
    container = build(settings, projectors=False)
    try:
        queues, runners = container.queues, container.runners
        queues.execute([OpenQueue("q", Caller("owner"), "Q")], 1_000)
        for start in range(0, args.entries, 200):
            joins = [
                JoinQueue("q", Caller(f"u{i}"), str(uuid.uuid4())) for i in range(start, min(args.entries, start + 200))
            ]
            queues.execute(joins, 2_000 + start)
        for runner in runners:
            runner.catch_up()
        publisher, queue_id = (
            live_rows.LiveRowsPublisher(container.pool, container.database),
            queue_id_for("q"),
        )
        publisher.publish(queue_id)
        times = []
        for n in range(args.rounds):
            queues.execute([JoinQueue("q", Caller(f"late{n}"), str(uuid.uuid4()))], 10**9 + n)
            for runner in runners:
                runner.catch_up()
            began = time.perf_counter()
            changes = publisher.publish(queue_id)
            times.append((time.perf_counter() - began) * 1000)
            print(f"  republished {changes:,} changes in {times[-1]:.1f} ms", flush=True)
        waiting = args.entries + args.rounds
        median = statistics.median(times)
        print(f"median {median:.1f} ms for ~{waiting:,} waiting entries: {median / waiting * 1000:.1f} µs per entry")
        print(json.dumps({"benchmark": "live_rows.publication", "entries": waiting, "median_ms": round(median, 2)}))
    finally:
        container.close()
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
