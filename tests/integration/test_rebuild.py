"""Rebuild on a real PostgreSQL: the in-memory twins build exactly the rows the PostgreSQL writers build."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from adapters.postgres import live_rows
from adapters.postgres.rebuild import Rebuild
from adapters.postgres.rebuild_memory import memory_writers
from domain.commands import Caller, SendNotification
from entrypoints.bootstrap import TRACKING_TABLE, Container
from entrypoints.read_models import read_models
from entrypoints.settings import Settings
from tests.integration.test_queues_projection import random_history


def rebuild(container: Container, settings: Settings, *, batch_size: int) -> Rebuild:
    return Rebuild(
        container.queues,
        container.database,
        list(read_models(settings).values()),
        tracking_table=TRACKING_TABLE,
        batch_size=batch_size,
        twins=memory_writers(settings.notification_ttl * 1000),
    )


@pytest.mark.parametrize("seed", [3, 11])
def test_twins_then_writers_rebuild_what_the_live_projectors_built(
    container: Container, settings: Settings, seed: int
) -> None:
    random_history(container, seed=seed)  # joins, leaves, calls, completions, no-shows, pauses, a close
    sent = [SendNotification(Caller("backend", is_service=True), uuid.uuid4(), f"user{i}", "promo") for i in range(5)]
    container.queues.execute(sent, 1_800_000_000_000)
    for runner in container.runners:  # the live read models, by the PostgreSQL writers
        runner.catch_up()
    job = rebuild(container, settings, batch_size=40)  # most events go to the twins, the last ones to the writers
    outcome = job.run(apply=False)
    assert outcome.events > 100
    assert outcome.differences == []

    with container.pool.connection() as conn:
        conn.execute("UPDATE queue_summary SET waiting = waiting + 1 WHERE event_id = 'ev1'")
    tampered = rebuild(container, settings, batch_size=40).run(apply=False)
    assert [(d.table, d.kind, d.live and d.live["waiting"]) for d in tampered.differences] == [
        ("queue_summary", "different", tampered.differences[0].rebuilt["waiting"] + 1)  # type: ignore[index]
    ]

    # a notification's position (its causing event's log position, which orders ties): compared and repaired
    with container.pool.connection() as conn:
        conn.execute("UPDATE notifications SET position = position + 1 WHERE user_id = 'user3'")
    tampered = rebuild(container, settings, batch_size=40).run(apply=False)
    assert sorted((d.table, d.kind) for d in tampered.differences) == [
        ("notifications", "different"),
        ("queue_summary", "different"),
    ]
    (note,) = [d for d in tampered.differences if d.table == "notifications"]
    assert note.rebuilt is not None
    assert note.live == {**note.rebuilt, "position": note.rebuilt["position"] + 1}
    assert rebuild(container, settings, batch_size=40).run(apply=True).switched
    assert rebuild(container, settings, batch_size=40).run(apply=False).differences == []


def test_the_switch_waits_for_a_live_rows_publication_under_way(container: Container, settings: Settings) -> None:
    """A publication spans transactions and holds `live_rows.PUBLICATIONS` meanwhile: the switch takes it
    before anything else, so it never compares or republishes half of one."""
    random_history(container, seed=3)
    for runner in container.runners:
        runner.catch_up()
    key = container.database.lock_key(live_rows.PUBLICATIONS)
    outcomes: list[object] = []
    with psycopg.connect(**container.database.params(), autocommit=True) as publishing:
        publishing.execute("SELECT pg_advisory_lock(%s)", (key,))  # as LiveRowsPublisher.publish holds it
        job = rebuild(container, settings, batch_size=40)
        switch = threading.Thread(target=lambda: outcomes.append(job.run(apply=True)))
        switch.start()
        deadline = time.monotonic() + 30
        waiting: tuple[object, ...] | None = None
        while waiting is None and time.monotonic() < deadline and switch.is_alive():
            waiting = publishing.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND (classid::bigint << 32 | objid::bigint) = (%s::bigint & x'ffffffffffffffff'::bigint)",
                (key,),
            ).fetchone()
            time.sleep(0.05)
        assert waiting is not None  # the switch asked for the lock and waits for the publication
        assert outcomes == []
        publishing.execute("SELECT pg_advisory_unlock(%s)", (key,))
        switch.join(timeout=60)
    assert len(outcomes) == 1
