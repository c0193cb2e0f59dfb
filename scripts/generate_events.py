"""Write N events into Lineup's log fast, through the real aggregates, event store and mapper (so they decode).

    LINEUP_DATABASE_URL=postgresql://... LINEUP_DATABASE_SCHEMA=bench \
        .venv/bin/python scripts/generate_events.py 1000000

The tables are created first (like `lineup migrate`). The log gets queues that people join, are
called from and complete (with the notifications those moments cause), some leaving, and
notifications a backend sends: every read model but Stripe has work. Events are saved in batches
of --batch (one transaction and one multi-row insert each), not one command at a time.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from domain.notifications import Notification
from domain.queue import Queue
from entrypoints.bootstrap import migrate, open_database
from entrypoints.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterable

    import psycopg
    from eventsourcing.domain import Aggregate

    from domain.queues import Queues

START_AT = 1_700_000_000_000  # epoch ms of the first event; one ms per step after it


def save(app: Queues, conn: psycopg.Connection[Any], aggregates: Iterable[Aggregate]) -> None:
    """The aggregates' new events, mapped by the application's mapper (so they decode as any other),
    in one COPY under the lock the event store's own inserts take (commit order = notification order)."""
    table = app.recorder.events_table_name  # type: ignore[attr-defined] - the connection's search_path finds it
    events = [event for aggregate in aggregates for event in aggregate.collect_events()]
    with conn.transaction(), conn.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        with cursor.copy(f"COPY {table} (originator_id, originator_version, topic, state) FROM STDIN") as copy:
            for event in events:
                stored = app.mapper.to_stored_event(event)
                copy.write_row((stored.originator_id, stored.originator_version, stored.topic, stored.state))


def generate(app: Queues, conn: psycopg.Connection[Any], count: int, *, queues: int = 200, batch: int = 5000) -> int:
    """Append at least `count` events (a step may add up to 3); returns how many were written."""
    tag = uuid.uuid4().hex[:8]
    opened: list[Queue] = []
    written, step, pending = 0, 0, 0
    touched: dict[uuid.UUID, Aggregate] = {}
    while written + pending < count:
        at = START_AT + step
        if len(opened) < queues:
            queue = Queue.open(
                f"gen-{tag}-{len(opened)}", f"owner-{len(opened)}", "Generated", None, 60, requires_payment=False, at=at
            )
            opened.append(queue)
        else:
            queue = opened[step % queues]
            pending -= len(queue.pending_events)  # type: ignore[attr-defined]
            kind = step // queues % 8
            if kind < 5 or not queue.waiting:  # five joins in eight steps
                queue.join(f"user-{tag}-{step}", str(uuid.uuid4()), at)
            elif kind == 5:
                entry = queue.call_next(at)
                queue.complete(entry.entry_id, at + 1)
            elif kind == 6:
                queue.leave(next(iter(queue.waiting.values())), at)
            else:
                sent = Notification.send(uuid.uuid4(), f"user-{tag}-{step}", "promo", {"n": step}, "backend", at)
                touched[sent.id] = sent
                pending += 1
        touched[queue.id] = queue
        pending += len(queue.pending_events)  # type: ignore[attr-defined]
        if pending >= batch:
            save(app, conn, touched.values())
            written, pending = written + pending, 0
            touched = {}
        step += 1
    if touched:
        save(app, conn, touched.values())
        written += pending
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, nargs="?", default=1_000_000)
    parser.add_argument("--queues", type=int, default=200)
    parser.add_argument("--batch", type=int, default=5000)
    options = parser.parse_args()
    settings = Settings.from_env()
    database, embedded = open_database(settings)
    try:
        app = migrate(settings, database)
        started = time.monotonic()
        with database.connect() as conn:
            written = generate(app, conn, options.count, queues=options.queues, batch=options.batch)
        seconds = time.monotonic() - started
        print(f"wrote {written} events in {seconds:.1f} s ({written / seconds:,.0f}/s)")
        app.close()
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
