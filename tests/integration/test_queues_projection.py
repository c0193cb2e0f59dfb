"""The queues read model on a real PostgreSQL: exactly once, atomic, and rebuildable byte for byte."""

from __future__ import annotations

import random
import uuid
from typing import Any

import psycopg
import pytest

from adapters.postgres.projector import ProjectionRunner
from adapters.postgres.queues import TABLES, PostgresQueuesWriter
from adapters.progress import Progress
from domain.commands import (
    Caller,
    CallNext,
    CloseQueue,
    Command,
    CompleteEntry,
    Joined,
    JoinQueue,
    LeaveQueue,
    MarkNoShow,
    OpenQueue,
    PauseQueue,
    ResumeQueue,
)
from domain.queue import EntryView, queue_id_for
from entrypoints.bootstrap import TRACKING_TABLE, Container, tracking_recorder
from projections.queues import QueuesProjection

OWNER = Caller("owner")


def dump(container: Container) -> bytes:
    """Every read-model row and the tracking position, as PostgreSQL's own COPY text."""
    out = bytearray()
    with container.pool.connection() as conn, conn.cursor() as cursor:
        for table, key in [(TABLES[0], "queue_id"), (TABLES[1], "entry_id"), (TRACKING_TABLE, "application_name")]:
            with cursor.copy(f"COPY (SELECT * FROM {table} ORDER BY {key}) TO STDOUT") as copy:
                for block in copy:
                    out += block
    return bytes(out)


def new_runner(
    container: Container, writer: Any = PostgresQueuesWriter, batch_size: int = 1000
) -> ProjectionRunner[Any]:
    return ProjectionRunner(
        container.queues,
        container.pool,
        QueuesProjection(),
        writer,
        tracking_recorder(container.queues),
        Progress(),
        batch_size=batch_size,
    )


def random_history(container: Container, seed: int, after_each: Any = None) -> None:
    """Several queues, a few hundred random commands in random batches."""
    rng = random.Random(seed)
    events = [f"ev{i}" for i in range(3)]
    users = [f"user{i}" for i in range(12)]
    at = 1_700_000_000_000
    entries: list[tuple[str, str]] = []
    container.queues.execute([OpenQueue(e, OWNER, f"Queue {e}", service_seconds=60) for e in events], at)
    for _ in range(60):
        batch: list[Command] = []
        for _ in range(rng.randint(1, 6)):
            event_id, user = rng.choice(events), Caller(rng.choice(users))
            kind = rng.random()
            if kind < 0.45:
                batch.append(JoinQueue(event_id, user, str(uuid.uuid4())))
            elif kind < 0.6:
                batch.append(LeaveQueue(event_id, user))
            elif kind < 0.8:
                batch.append(CallNext(event_id, OWNER))
            elif kind < 0.9 and entries:
                event_id, entry_id = rng.choice(entries)
                batch.append(CompleteEntry(event_id, OWNER, entry_id))
            elif kind < 0.95 and entries:
                event_id, entry_id = rng.choice(entries)
                batch.append(MarkNoShow(event_id, OWNER, entry_id))
            else:
                batch.append(rng.choice([PauseQueue, ResumeQueue])(event_id, OWNER))
        at += rng.randint(1, 90_000)
        for outcome in container.queues.execute(batch, at).outcomes:
            if isinstance(outcome, Joined):
                entries.append((outcome.entry.event_id, outcome.entry.entry_id))
            elif isinstance(outcome, EntryView) and outcome.status == "called":
                entries.append((outcome.event_id, outcome.entry_id))
        if after_each is not None:
            after_each()
    container.queues.execute([CloseQueue(events[0], OWNER)], at + 1)


def test_read_model_answers_like_the_commands(container: Container) -> None:
    container.queues.execute([OpenQueue("e1", OWNER, "Show", service_seconds=100)], 1_000)
    outcomes = container.queues.execute([JoinQueue("e1", Caller(u), str(uuid.uuid4())) for u in "abc"], 2_000).outcomes
    container.queues.execute([CallNext("e1", OWNER)], 3_000)
    assert container.runners[0].catch_up() == 7  # opened, 3 joined, a next in line, a called, b next in line
    joined = [o.entry for o in outcomes if isinstance(o, Joined)]
    queue = container.reader.summary("e1")
    assert queue is not None
    assert queue["waiting"] == 2
    listed = container.reader.event_entries(queue)
    assert [(e.user_id, e.status, e.position) for e in listed] == [
        ("a", "called", None),
        ("b", "waiting", 1),
        ("c", "waiting", 2),
    ]
    (mine,) = container.reader.user_entries("c")
    assert mine.entry_id == joined[2].entry_id
    assert (mine.position, mine.estimated_time) == (2, 3_000 + 2 * 100_000)


def test_a_position_processed_twice_is_refused_and_nothing_doubles(container: Container) -> None:
    random_history(container, seed=1)
    container.runners[0].catch_up()
    before = dump(container)
    stale = new_runner(container)
    stale.position = 0  # a restarted or second process that believes it starts from scratch
    assert stale.run_once() == 0  # its batch rolled back: the tracking row refused the old position
    assert dump(container) == before
    assert stale.position == container.runners[0].position


def test_a_failure_inside_the_transaction_leaves_neither_rows_nor_position(container: Container) -> None:
    container.queues.execute([OpenQueue("e1", OWNER, "Show")], 1_000)
    container.queues.execute([JoinQueue("e1", Caller(u), str(uuid.uuid4())) for u in "abcd"], 2_000)

    class FailingWriter(PostgresQueuesWriter):
        def entry_joined(self, *args: Any) -> None:
            super().entry_joined(*args)
            if args[2] == "c":
                raise RuntimeError("disk on fire")

    failing = new_runner(container, FailingWriter)
    with pytest.raises(RuntimeError, match="disk on fire"):
        failing.run_once()
    with container.pool.connection() as conn:
        assert conn.execute("SELECT count(*) AS n FROM queue_entries").fetchone() == {"n": 0}
        assert conn.execute("SELECT count(*) AS n FROM queue_summary").fetchone() == {"n": 0}
    assert tracking_recorder(container.queues).max_tracking_id("queues") is None
    assert container.runners[0].catch_up() == 6  # opened, 4 joined, a next in line
    assert len(container.reader.event_entries(container.reader.summary("e1") or {})) == 4


@pytest.mark.parametrize("seed", [7, 8])
def test_rebuild_from_zero_is_byte_identical_to_incremental(container: Container, seed: int) -> None:
    incremental = new_runner(container, batch_size=1)  # one event per transaction, interleaved with writes
    random_history(container, seed, after_each=incremental.catch_up)
    incremental.catch_up()
    live = dump(container)
    assert live.count(b"\n") > 10
    with psycopg.connect(**container.database.params(), autocommit=True) as conn:
        conn.execute("TRUNCATE queue_summary, queue_entries")
        conn.execute(f"DELETE FROM {TRACKING_TABLE} WHERE application_name = 'queues'")
    assert dump(container) != live
    new_runner(container, batch_size=1000).catch_up()
    assert dump(container) == live


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_read_model_answers_what_the_aggregates_hold(container: Container, seed: int) -> None:
    """After random histories, every queue's live list, positions and times equal its aggregate's."""
    random_history(container, seed)
    late = [JoinQueue(e, Caller(f"late{n}"), str(uuid.uuid4())) for e in ("ev1", "ev2") for n in range(3)]
    container.queues.execute([ResumeQueue("ev1", OWNER), ResumeQueue("ev2", OWNER), *late], 1_800_000_000_000)
    container.runners[0].catch_up()
    compared = 0
    for event_id in ("ev0", "ev1", "ev2"):
        queue = container.reader.summary(event_id)
        assert queue is not None
        aggregate = container.queues.repository.get(queue_id_for(event_id))
        expected = [aggregate.entry(entry_id) for entry_id in aggregate.waiting]
        listed = [entry for entry in container.reader.event_entries(queue) if entry.status == "waiting"]
        assert listed == expected
        assert (queue["status"], queue["waiting"], queue["average_ms"]) == (
            aggregate.status,
            len(aggregate.waiting),
            aggregate.average_ms,
        )
        called = {entry.entry_id for entry in container.reader.event_entries(queue) if entry.status == "called"}
        assert called == set(aggregate.called)
        for entry in expected:
            assert entry in container.reader.user_entries(entry.user_id)
        compared += len(expected)
    assert compared > 0, "the history should leave somebody waiting"
