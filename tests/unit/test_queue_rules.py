"""The Queue aggregate's rules, on the in-memory event store."""

from __future__ import annotations

import uuid

import pytest

from domain.commands import (
    Caller,
    CallNext,
    CloseQueue,
    CompleteEntry,
    Joined,
    JoinQueue,
    LeaveQueue,
    MarkNoShow,
    OpenQueue,
    PauseQueue,
    ResumeQueue,
)
from domain.errors import (
    AlreadyOpenError,
    EntryNotFoundError,
    InvalidCommandError,
    NotCalledError,
    NotOwnerError,
    PaymentRequiredError,
    QueueClosedError,
    QueueEmptyError,
    QueueFullError,
    QueueNotFoundError,
    QueuePausedError,
)
from domain.queue import EntryView, QueueSummary, next_average_ms, queue_id_for
from domain.queues import Queues

OWNER = Caller("owner")


def join(user: str) -> JoinQueue:
    return JoinQueue("e1", Caller(user), str(uuid.uuid4()))


def run_one(app: Queues, command: object, at: int = 1_000) -> object:
    (outcome,) = app.execute([command], at).outcomes  # type: ignore[list-item]
    return outcome


@pytest.fixture
def app() -> Queues:
    queues = Queues()
    assert isinstance(run_one(queues, OpenQueue("e1", OWNER, "Show", capacity=3, service_seconds=60)), QueueSummary)
    return queues


def test_join_gives_positions_first_come_first_served(app: Queues) -> None:
    outcomes = app.execute([join("a"), join("b")], 5_000).outcomes
    entries = [o.entry for o in outcomes if isinstance(o, Joined)]
    assert [(e.user_id, e.position, e.estimated_time) for e in entries] == [("a", 1, 65_000), ("b", 2, 125_000)]


def test_a_second_join_returns_the_active_entry_without_a_new_one(app: Queues) -> None:
    first, again = app.execute([join("a"), join("a")], 5_000).outcomes
    assert isinstance(first, Joined)
    assert isinstance(again, Joined)
    assert first.created
    assert not again.created
    assert again.entry.entry_id == first.entry.entry_id
    assert app.summary("e1").waiting == 1


@pytest.mark.parametrize(
    ("setup", "command", "error"),
    [
        ([], OpenQueue("e1", OWNER, "again"), AlreadyOpenError),
        ([], JoinQueue("nope", Caller("a"), "x"), QueueNotFoundError),
        ([join("a"), join("b"), join("c")], join("d"), QueueFullError),
        ([PauseQueue("e1", OWNER)], join("a"), QueuePausedError),
        ([CloseQueue("e1", OWNER)], join("a"), QueueClosedError),
        ([], CallNext("e1", OWNER), QueueEmptyError),
        ([join("a")], CallNext("e1", Caller("a")), NotOwnerError),
        ([], LeaveQueue("e1", Caller("a")), EntryNotFoundError),
        ([], CompleteEntry("e1", OWNER, "missing"), EntryNotFoundError),
        ([], MarkNoShow("e1", OWNER, "missing"), EntryNotFoundError),
        ([CloseQueue("e1", OWNER)], CloseQueue("e1", OWNER), QueueClosedError),
        ([], OpenQueue("e2", OWNER, "x", capacity=0), InvalidCommandError),
    ],
)
def test_rules_refuse_with_typed_errors(app: Queues, setup: list[object], command: object, error: type) -> None:
    app.execute(setup, 2_000)  # type: ignore[arg-type]
    assert isinstance(run_one(app, command, 3_000), error)


def test_complete_requires_a_called_entry_and_moves_the_average(app: Queues) -> None:
    joined = run_one(app, join("a"), 1_000)
    assert isinstance(joined, Joined)
    entry_id = joined.entry.entry_id
    assert isinstance(run_one(app, CompleteEntry("e1", OWNER, entry_id), 2_000), NotCalledError)
    called = run_one(app, CallNext("e1", OWNER), 10_000)
    assert isinstance(called, EntryView)
    assert called.status == "called"
    done = run_one(app, CompleteEntry("e1", OWNER, entry_id), 40_000)
    assert isinstance(done, EntryView)
    assert done.status == "completed"
    assert app.summary("e1").avg_service_seconds == next_average_ms(60_000, 30_000) / 1000


def test_paid_queue_refuses_a_plain_join() -> None:
    app = Queues()
    run_one(app, OpenQueue("e1", OWNER, "Paid", requires_payment=True))
    assert isinstance(run_one(app, join("a")), PaymentRequiredError)


def test_close_cancels_waiting_entries_and_pause_resume_toggle(app: Queues) -> None:
    app.execute([join("a"), join("b"), PauseQueue("e1", OWNER)], 1_000)
    assert app.summary("e1").status == "paused"
    run_one(app, ResumeQueue("e1", OWNER))
    assert app.summary("e1").status == "open"
    summary = run_one(app, CloseQueue("e1", OWNER))
    assert isinstance(summary, QueueSummary)
    assert (summary.status, summary.waiting) == ("closed", 0)


def test_no_show_cancels_with_reason(app: Queues) -> None:
    joined = run_one(app, join("a"))
    assert isinstance(joined, Joined)
    cancelled = run_one(app, MarkNoShow("e1", OWNER, joined.entry.entry_id))
    assert isinstance(cancelled, EntryView)
    assert (cancelled.status, cancelled.reason) == ("cancelled", "no_show")


def test_snapshots_are_taken_and_a_cold_load_from_them_equals_the_live_queue() -> None:
    app = Queues()
    app.snapshot_every = 5
    run_one(app, OpenQueue("e1", OWNER, "Show"))
    for n in range(4):
        app.execute([join(f"u{n}-{i}") for i in range(3)] + [CallNext("e1", OWNER)], 2_000 + n)
    assert app.snapshots is not None
    taken = list(app.snapshots.get(queue_id_for("e1")))
    assert taken, "a queue with 17 events and 8 entries should have been snapshotted"
    live = app._live[queue_id_for("e1")]
    cold = app.repository.get(queue_id_for("e1"))
    assert cold.__dict__ == live.__dict__
