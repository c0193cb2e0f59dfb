"""Rebuild rate of every read model, beside the raw rate of reading and decoding the same log, in one run.

    LINEUP_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test .venv/bin/python scripts/bench/rebuild.py

1. A fresh schema of that database gets --events events (scripts/generate_events.py: queues with
   joins, calls, completions and leaves, plus sent notifications; COPY in batches).
2. Raw: the whole log read in pages of --page (eventsourcing's select_notifications) and every
   event decoded (the application's mapper): what any replay has to do at the least.
3. Rebuild, twice, in this process with the code `lineup rebuild --all` runs (no server: it rebuilds
   to the head and switches): first into empty live tables (every row inserted and put on the
   change feed in the switch), then over live tables that are already equal (the repair case).
   Each time is the whole run: scratch tables, build, switch, drop.
4. Prints the figures and a JSON line last; the schema is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import psycopg

from adapters.postgres.database import Database
from adapters.postgres.rebuild import Rebuild
from adapters.postgres.rebuild_memory import memory_writers
from entrypoints.bootstrap import TRACKING_TABLE, migrate
from entrypoints.read_models import read_models
from entrypoints.settings import Settings
from scripts.generate_events import generate


def raw(app: Any, page: int) -> tuple[int, float]:
    """(events, seconds) to read and decode the whole log."""
    started, position, count = time.perf_counter(), 0, 0
    while notifications := app.recorder.select_notifications(start=position, limit=page, inclusive_of_start=False):
        for notification in notifications:
            app.mapper.to_domain_event(notification)
        count += len(notifications)
        position = notifications[-1].id
    return count, time.perf_counter() - started


def rebuild(app: Any, database: Database, settings: Settings) -> tuple[int, float, int]:
    """(events, seconds, rows that differed) of `lineup rebuild --all`'s work."""
    models = list(read_models(settings).values())
    twins = memory_writers(settings.notification_ttl * 1000)
    started = time.perf_counter()
    outcome = Rebuild(app, database, models, tracking_table=TRACKING_TABLE, twins=twins).run(apply=True)
    return outcome.events, time.perf_counter() - started, sum(outcome.counts.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--page", type=int, default=2000, help="events per read (the rebuild's batch too)")
    options = parser.parse_args()
    url = os.environ.get("LINEUP_DATABASE_URL") or sys.exit("set LINEUP_DATABASE_URL")
    schema = f"bench_rebuild_{uuid.uuid4().hex[:8]}"
    settings = Settings(database_url=url, database_schema=schema)
    database = Database(url, schema)
    app = migrate(settings, database)
    try:
        started = time.perf_counter()
        with database.connect() as conn:
            written = generate(app, conn, options.events)
        generated = time.perf_counter() - started
        print(f"generated {written:,} events in {generated:.1f} s ({written / generated:,.0f}/s)")
        with database.connect() as conn:
            conn.execute("VACUUM ANALYZE")  # the log as a long-lived one is: visibility map set, statistics known
        raw_events, raw_seconds = raw(app, options.page)
        raw_rate = raw_events / raw_seconds
        print(f"raw read + decode: {raw_events:,} events in {raw_seconds:.1f} s = {raw_rate:,.0f} events/s")
        results = {}
        for case in ("into empty live tables", "over equal live tables"):
            events, seconds, differed = rebuild(app, database, settings)
            rate = events / seconds
            results[case] = {
                "events": events,
                "seconds": round(seconds, 2),
                "rate": round(rate),
                "rows_differed": differed,
            }
            print(
                f"rebuild --all {case}: {events:,} events in {seconds:.1f} s = {rate:,.0f} events/s"
                f" ({rate / raw_rate:.2f} x raw), {differed:,} rows differed"
            )
        line = {
            "bench": "rebuild",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "events": written,
            "raw_rate": round(raw_rate),
            **{case.replace(" ", "_"): result for case, result in results.items()},
        }
        print(json.dumps(line))
    finally:
        app.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
