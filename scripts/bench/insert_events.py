"""Appending a batch of stored events: eventsourcing's recorder beside Lineup's binary-column one.

Both recorders run against the same fresh schema in the same run, on the same batches (N events
of S bytes of state, like a batch of recorded Stripe events), and the script prints the CPU time
of the calling thread and the wall time per batch, and their ratios. The CPU time is what the
group committer and the Stripe process pay on the server's one GIL.

    .venv/bin/python scripts/bench/insert_events.py [--events 20] [--state-bytes 3400] [--batches 300]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresDatastore, PostgresProcessRecorder

from adapters.postgres.eventstore import BinaryProcessRecorder


def measure(recorder: PostgresProcessRecorder, batches: list[list[StoredEvent]]) -> tuple[float, float]:
    for batch in batches[:10]:  # warm up: prepared statements, type info
        recorder.insert_events(batch)
    cpu, wall = time.thread_time(), time.perf_counter()
    for batch in batches[10:]:
        recorder.insert_events(batch)
    timed = len(batches) - 10
    return (time.thread_time() - cpu) / timed * 1e3, (time.perf_counter() - wall) / timed * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("LINEUP_BENCH_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres",
    )
    parser.add_argument("--events", type=int, default=20, help="events per batch (one insert_events call)")
    parser.add_argument("--state-bytes", type=int, default=3400, help="bytes of state per event (a Stripe event)")
    parser.add_argument("--batches", type=int, default=300)
    args = parser.parse_args()

    import psycopg

    schema = f"bench_ins_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    params = psycopg.conninfo.conninfo_to_dict(args.database_url)
    datastore = PostgresDatastore(
        dbname=str(params.get("dbname", "postgres")),
        host=str(params.get("host", "127.0.0.1")),
        port=str(params.get("port", "5432")),
        user=str(params.get("user", "postgres")),
        password=str(params.get("password", "")),
        schema=schema,
        pool_size=2,
    )
    state = json.dumps({"payload": "x" * args.state_bytes}).encode()
    results = {}
    try:
        for name, cls in (("eventsourcing", PostgresProcessRecorder), ("lineup", BinaryProcessRecorder)):
            recorder = cls(datastore, events_table_name=f"{name}_events", tracking_table_name=f"{name}_tracking")
            recorder.create_table()
            batches = [
                [StoredEvent(uuid.uuid4(), 1, "domain.stripe:StripeEvent.Received", state) for _ in range(args.events)]
                for _ in range(args.batches + 10)
            ]
            results[name] = measure(recorder, batches)
    finally:
        datastore.close()
        with psycopg.connect(args.database_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")

    base_cpu, base_wall = results["eventsourcing"]
    cpu, wall = results["lineup"]
    print(f"insert_events: {args.batches} batches of {args.events} events, {args.state_bytes} B of state each")
    print(f"  eventsourcing composite array: {base_cpu:.3f} ms CPU, {base_wall:.3f} ms wall per batch")
    print(f"  lineup binary columns:         {cpu:.3f} ms CPU, {wall:.3f} ms wall per batch")
    print(f"  ratio lineup / eventsourcing:  CPU {cpu / base_cpu:.2f}, wall {wall / base_wall:.2f}")
    print(
        json.dumps(
            {
                "benchmark": "insert_events",
                "events": args.events,
                "state_bytes": args.state_bytes,
                "baseline_cpu_ms": round(base_cpu, 3),
                "baseline_wall_ms": round(base_wall, 3),
                "cpu_ms": round(cpu, 3),
                "wall_ms": round(wall, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
