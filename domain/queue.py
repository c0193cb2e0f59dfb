"""The Queue aggregate: one live queue per event, first come first served."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.errors import (
    EntryNotFoundError,
    InvalidCommandError,
    NotCalledError,
    PaymentRequiredError,
    QueueClosedError,
    QueueEmptyError,
    QueueFullError,
    QueuePausedError,
)

OPEN, PAUSED, CLOSED = "open", "paused", "closed"
WAITING, CALLED, COMPLETED, CANCELLED = "waiting", "called", "completed", "cancelled"
LEFT, NO_SHOW, CLOSED_REASON = "left", "no_show", "closed"
EWMA_WEIGHT = 5  # each observed service time moves the average by 1/5 of the difference


def queue_id_for(event_id: str) -> UUID:
    """The queue aggregate's id, derived from the event id so that a second open collides."""
    return uuid5(NAMESPACE_URL, f"/events/{event_id}/queue")


def next_average_ms(average_ms: int, observed_ms: int) -> int:
    """Exponentially weighted mean in whole milliseconds: integer maths, so replays agree exactly."""
    return (average_ms * (EWMA_WEIGHT - 1) + observed_ms + EWMA_WEIGHT // 2) // EWMA_WEIGHT


def estimated_time(last_event_at: int, position: int, average_ms: int) -> int:
    """The contract's rule: time of the queue's latest event + position * average service time."""
    return last_event_at + position * average_ms


@dataclass(frozen=True)
class EntryView:
    """One entry as the command API answers it."""

    entry_id: str
    event_id: str
    user_id: str
    position: int | None
    estimated_time: int | None
    status: str
    reason: str | None = None


@dataclass(frozen=True)
class QueueSummary:
    """The queue as the command API answers it."""

    event_id: str
    name: str
    owner_id: str
    status: str
    waiting: int
    avg_service_seconds: float
    capacity: int | None
    requires_payment: bool


class Queue(Aggregate):
    """A creator's live queue. Public methods check rules; `@event` methods only mutate."""

    class Opened(Aggregate.Created):
        event_id: str
        owner_id: str
        name: str
        capacity: int | None
        service_ms: int
        requires_payment: bool
        at: int

    class UserJoined(Aggregate.Event):
        entry_id: str
        user_id: str
        at: int

    class UserLeft(Aggregate.Event):
        entry_id: str
        at: int

    class EntryCalled(Aggregate.Event):
        entry_id: str
        at: int
        user_id: str = ""  # for the read side ("" in events recorded before these were added)
        event_id: str = ""

    class EntryCompleted(Aggregate.Event):
        entry_id: str
        service_ms: int  # observed called -> completed duration
        average_ms: int  # the queue's average service time after this observation
        at: int

    class EntryNoShow(Aggregate.Event):
        entry_id: str
        at: int

    class NextInLine(Aggregate.Event):
        """A user became position 1 (the contract's `queue.next` moment)."""

        entry_id: str
        user_id: str
        event_id: str
        at: int

    class Paused(Aggregate.Event):
        at: int

    class Resumed(Aggregate.Event):
        at: int

    class Closed(Aggregate.Event):
        at: int

    @staticmethod
    def create_id(event_id: str) -> UUID:
        return queue_id_for(event_id)

    @event(Opened)
    def __init__(  # noqa: PLR0913
        self,
        event_id: str,
        owner_id: str,
        name: str,
        capacity: int | None,
        service_ms: int,
        requires_payment: bool,  # noqa: FBT001
        at: int,
    ) -> None:
        self.event_id, self.owner_id, self.name = event_id, owner_id, name
        self.capacity, self.requires_payment = capacity, requires_payment
        self.status = OPEN
        self.average_ms = service_ms
        self.last_at = at
        self.waiting: dict[str, str] = {}  # entry id -> user id, in arrival order
        self.called: dict[str, list[str | int]] = {}  # entry id -> [user id, called at]
        self.active: dict[str, str] = {}  # user id -> their one active entry id

    @classmethod
    def open(  # noqa: PLR0913
        cls,
        event_id: str,
        owner_id: str,
        name: str,
        capacity: int | None,
        service_seconds: int,
        *,
        requires_payment: bool,
        at: int,
    ) -> Queue:
        if not name.strip():
            raise InvalidCommandError("name must not be empty")
        if capacity is not None and capacity < 1:
            raise InvalidCommandError("capacity must be at least 1")
        if service_seconds < 1:
            raise InvalidCommandError("service_seconds must be at least 1")
        return cls(
            event_id=event_id,
            owner_id=owner_id,
            name=name,
            capacity=capacity,
            service_ms=service_seconds * 1000,
            requires_payment=requires_payment,
            at=at,
        )

    # Queries on the current state -------------------------------------------------------

    def position_of(self, entry_id: str) -> int | None:
        for index, waiting_id in enumerate(self.waiting, start=1):
            if waiting_id == entry_id:
                return index
        return None

    def entry(self, entry_id: str, position: int | None = None) -> EntryView:
        """The entry as answered now; pass `position` when known (scanning a long queue costs O(n))."""
        if entry_id in self.waiting:
            position = position or self.position_of(entry_id)
            assert position is not None  # invariant: a waiting entry has a position
            eta = estimated_time(self.last_at, position, self.average_ms)
            return EntryView(entry_id, self.event_id, self.waiting[entry_id], position, eta, WAITING)
        if entry_id in self.called:
            return EntryView(entry_id, self.event_id, str(self.called[entry_id][0]), None, None, CALLED)
        raise EntryNotFoundError(f"no active entry {entry_id} in the queue of event {self.event_id}")

    def summary(self) -> QueueSummary:
        return QueueSummary(
            event_id=self.event_id,
            name=self.name,
            owner_id=self.owner_id,
            status=self.status,
            waiting=len(self.waiting),
            avg_service_seconds=self.average_ms / 1000,
            capacity=self.capacity,
            requires_payment=self.requires_payment,
        )

    # Commands ----------------------------------------------------------------------------

    def join(self, user_id: str, entry_id: str, at: int, *, paid: bool = False) -> tuple[EntryView, bool]:
        """Admit a user; returns (entry, created). A user's active entry is returned again."""
        existing = self.active.get(user_id)
        if existing is not None:
            return self.entry(existing), False
        if self.status == CLOSED:
            raise QueueClosedError(f"the queue of event {self.event_id} is closed")
        if self.status == PAUSED:
            raise QueuePausedError(f"the queue of event {self.event_id} is paused")
        if self.requires_payment and not paid:
            raise PaymentRequiredError(f"the queue of event {self.event_id} admits paid users only")
        if self.capacity is not None and len(self.waiting) >= self.capacity:
            raise QueueFullError(f"the queue of event {self.event_id} is full ({self.capacity} waiting)")
        first = not self.waiting
        self._user_joined(entry_id=entry_id, user_id=user_id, at=at)
        if first:
            self._next_in_line(entry_id=entry_id, user_id=user_id, event_id=self.event_id, at=at)
        return self.entry(entry_id, position=len(self.waiting)), True  # a new entry is the last one

    def leave(self, user_id: str, at: int) -> EntryView:
        entry_id = self.active.get(user_id)
        if entry_id is None:
            raise EntryNotFoundError(f"user {user_id} is not in the queue of event {self.event_id}")
        was_first = self._is_first(entry_id)
        self._user_left(entry_id=entry_id, at=at)
        if was_first:
            self._announce_first(at)
        return EntryView(entry_id, self.event_id, user_id, None, None, CANCELLED, LEFT)

    def call_next(self, at: int) -> EntryView:
        if self.status == CLOSED:
            raise QueueClosedError(f"the queue of event {self.event_id} is closed")
        if not self.waiting:
            raise QueueEmptyError(f"nobody is waiting in the queue of event {self.event_id}")
        entry_id = next(iter(self.waiting))
        self._entry_called(entry_id=entry_id, at=at, user_id=self.waiting[entry_id], event_id=self.event_id)
        self._announce_first(at)
        return self.entry(entry_id)

    def complete(self, entry_id: str, at: int) -> EntryView:
        if entry_id in self.waiting:
            raise NotCalledError(f"entry {entry_id} has not been called")
        if entry_id not in self.called:
            raise EntryNotFoundError(f"no active entry {entry_id} in the queue of event {self.event_id}")
        user_id, called_at = self.called[entry_id]
        service_ms = max(0, at - int(called_at))
        average_ms = next_average_ms(self.average_ms, service_ms)
        self._entry_completed(entry_id=entry_id, service_ms=service_ms, average_ms=average_ms, at=at)
        return EntryView(entry_id, self.event_id, str(user_id), None, None, COMPLETED)

    def no_show(self, entry_id: str, at: int) -> EntryView:
        called = self.called.get(entry_id)
        user_id = self.waiting.get(entry_id) or (str(called[0]) if called else None)
        if user_id is None:
            raise EntryNotFoundError(f"no active entry {entry_id} in the queue of event {self.event_id}")
        was_first = self._is_first(entry_id)
        self._entry_no_show(entry_id=entry_id, at=at)
        if was_first:
            self._announce_first(at)
        return EntryView(entry_id, self.event_id, str(user_id), None, None, CANCELLED, NO_SHOW)

    def pause(self, at: int) -> None:
        if self.status == CLOSED:
            raise QueueClosedError(f"the queue of event {self.event_id} is closed")
        if self.status == OPEN:
            self._paused(at=at)

    def resume(self, at: int) -> None:
        if self.status == CLOSED:
            raise QueueClosedError(f"the queue of event {self.event_id} is closed")
        if self.status == PAUSED:
            self._resumed(at=at)

    def close(self, at: int) -> None:
        if self.status == CLOSED:
            raise QueueClosedError(f"the queue of event {self.event_id} is already closed")
        self._closed(at=at)

    def _is_first(self, entry_id: str) -> bool:
        return next(iter(self.waiting), None) == entry_id

    def _announce_first(self, at: int) -> None:
        """After the first waiting entry went away: the next one, if any, is now position 1."""
        first = next(iter(self.waiting), None)
        if first is not None:
            self._next_in_line(entry_id=first, user_id=self.waiting[first], event_id=self.event_id, at=at)

    # Mutations: run again on every replay, so they only change state ----------------------

    @event(UserJoined)
    def _user_joined(self, entry_id: str, user_id: str, at: int) -> None:
        self.waiting[entry_id] = user_id
        self.active[user_id] = entry_id
        self.last_at = at

    @event(UserLeft)
    def _user_left(self, entry_id: str, at: int) -> None:
        self._finish(entry_id)
        self.last_at = at

    @event(EntryCalled)
    def _entry_called(self, entry_id: str, at: int, user_id: str = "", event_id: str = "") -> None:
        del user_id, event_id  # carried for the read side; the aggregate knows them
        user_id = self.waiting.pop(entry_id)
        self.called[entry_id] = [user_id, at]
        self.last_at = at

    @event(EntryCompleted)
    def _entry_completed(self, entry_id: str, service_ms: int, average_ms: int, at: int) -> None:
        del service_ms  # recorded for the read side; the average already includes it
        self._finish(entry_id)
        self.average_ms = average_ms
        self.last_at = at

    @event(EntryNoShow)
    def _entry_no_show(self, entry_id: str, at: int) -> None:
        self._finish(entry_id)
        self.last_at = at

    @event(NextInLine)
    def _next_in_line(self, entry_id: str, user_id: str, event_id: str, at: int) -> None:
        del entry_id, user_id, event_id, at  # a moment for the read side; it changes no state (not even last_at)

    @event(Paused)
    def _paused(self, at: int) -> None:
        self.status = PAUSED
        self.last_at = at

    @event(Resumed)
    def _resumed(self, at: int) -> None:
        self.status = OPEN
        self.last_at = at

    @event(Closed)
    def _closed(self, at: int) -> None:
        for user_id in self.waiting.values():
            del self.active[user_id]
        self.waiting = {}
        self.status = CLOSED
        self.last_at = at

    def _finish(self, entry_id: str) -> None:
        user_id = self.waiting.pop(entry_id, None)
        if user_id is None:
            user_id = str(self.called.pop(entry_id)[0])
        del self.active[user_id]
