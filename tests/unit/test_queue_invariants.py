"""Hypothesis state machine: the queue against a plain model, over hundreds of random command sequences."""

from __future__ import annotations

import uuid

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

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
from domain.errors import QueueError
from domain.queue import Queue, queue_id_for
from domain.queues import Queues

USERS = [f"u{i}" for i in range(8)]
OWNER = Caller("owner")


class QueueMachine(RuleBasedStateMachine):
    """The model: waiting users in arrival order, called users, status. Batches mix commands."""

    def __init__(self) -> None:
        super().__init__()
        self.app = Queues()
        self.clock = 1_000
        self.capacity: int | None = None
        self.waiting: list[str] = []
        self.called: dict[str, str] = {}  # user -> entry id
        self.entries: dict[str, str] = {}  # user -> entry id of the active entry
        self.status = "open"

    def run(self, *commands: Command) -> list[object]:
        self.clock += 1_000
        return list(self.app.execute(list(commands), self.clock).outcomes)

    @initialize(capacity=st.none() | st.integers(1, 6))
    def open_queue(self, capacity: int | None) -> None:
        self.capacity = capacity
        self.run(OpenQueue("e", OWNER, "Q", capacity=capacity, service_seconds=30))

    @rule(users=st.lists(st.sampled_from(USERS), min_size=1, max_size=4))
    def join(self, users: list[str]) -> None:
        outcomes = self.run(*(JoinQueue("e", Caller(u), str(uuid.uuid4())) for u in users))
        for user, outcome in zip(users, outcomes, strict=True):
            if user in self.entries:
                assert isinstance(outcome, Joined)
                assert not outcome.created
                assert outcome.entry.entry_id == self.entries[user]
            elif self.status != "open" or (self.capacity is not None and len(self.waiting) >= self.capacity):
                assert isinstance(outcome, QueueError)
            else:
                assert isinstance(outcome, Joined)
                assert outcome.created
                self.waiting.append(user)
                self.entries[user] = outcome.entry.entry_id
                assert outcome.entry.position == len(self.waiting)

    @rule(user=st.sampled_from(USERS))
    def leave(self, user: str) -> None:
        (outcome,) = self.run(LeaveQueue("e", Caller(user)))
        if user not in self.entries:
            assert isinstance(outcome, QueueError)
            return
        assert not isinstance(outcome, QueueError)
        self._forget(user)

    @rule()
    def call_next(self) -> None:
        (outcome,) = self.run(CallNext("e", OWNER))
        if self.status == "closed" or not self.waiting:
            assert isinstance(outcome, QueueError)
            return
        first = self.waiting.pop(0)  # first come, first served
        assert getattr(outcome, "user_id", None) == first
        self.called[first] = self.entries[first]

    @rule(data=st.data())
    def complete_or_no_show(self, data: st.DataObject) -> None:
        if not self.entries:
            return
        user = data.draw(st.sampled_from(sorted(self.entries)))
        entry_id = self.entries[user]
        complete = data.draw(st.booleans())
        (outcome,) = self.run(CompleteEntry("e", OWNER, entry_id) if complete else MarkNoShow("e", OWNER, entry_id))
        if complete and user not in self.called:
            assert isinstance(outcome, QueueError)
            return
        assert not isinstance(outcome, QueueError)
        self._forget(user)

    @rule(action=st.sampled_from(["pause", "resume", "close"]))
    def change_status(self, action: str) -> None:
        command = {"pause": PauseQueue, "resume": ResumeQueue, "close": CloseQueue}[action]("e", OWNER)
        (outcome,) = self.run(command)
        if self.status == "closed":
            assert isinstance(outcome, QueueError)
            return
        if action == "close":
            for user in list(self.waiting):
                self._forget(user)
            self.status = "closed"
        else:
            self.status = "paused" if action == "pause" else "open"

    def _forget(self, user: str) -> None:
        if user in self.waiting:
            self.waiting.remove(user)
        self.called.pop(user, None)
        del self.entries[user]

    def live(self) -> Queue:
        return self.app._live[queue_id_for("e")]

    @invariant()
    def matches_the_model(self) -> None:
        queue = self.live()
        assert list(queue.waiting.values()) == self.waiting
        assert queue.status == self.status
        positions = [queue.entry(entry_id).position for entry_id in queue.waiting]
        assert positions == list(range(1, len(positions) + 1))  # 1..n, no gaps
        assert len(queue.active) == len(set(queue.active.values())) == len(queue.waiting) + len(queue.called)
        assert self.capacity is None or len(queue.waiting) <= self.capacity

    @invariant()
    def replay_equals_live_state(self) -> None:
        live = self.live()
        replayed: Queue = self.app.repository.get(queue_id_for("e"))
        assert replayed.__dict__ == live.__dict__


QueueMachine.TestCase.settings = settings(max_examples=500, stateful_step_count=15, deadline=None)
TestQueueMachine = QueueMachine.TestCase
