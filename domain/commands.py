"""Queue commands (imperative, plain data) and the one function that applies them to a Queue."""

from __future__ import annotations

from dataclasses import dataclass

from domain.errors import AlreadyOpenError, NotOwnerError, QueueNotFoundError
from domain.queue import EntryView, Queue, QueueSummary


@dataclass(frozen=True)
class Caller:
    """Who asks: the token's subject, and whether it is a trusted backend."""

    user_id: str
    is_service: bool = False


@dataclass(frozen=True)
class OpenQueue:
    event_id: str
    caller: Caller
    name: str
    capacity: int | None = None
    service_seconds: int = 300
    requires_payment: bool = False


@dataclass(frozen=True)
class JoinQueue:
    event_id: str
    caller: Caller
    entry_id: str  # made by the caller of the domain: ids are passed in, never made inside


@dataclass(frozen=True)
class LeaveQueue:
    event_id: str
    caller: Caller


@dataclass(frozen=True)
class CallNext:
    event_id: str
    caller: Caller


@dataclass(frozen=True)
class CompleteEntry:
    event_id: str
    caller: Caller
    entry_id: str


@dataclass(frozen=True)
class MarkNoShow:
    event_id: str
    caller: Caller
    entry_id: str


@dataclass(frozen=True)
class PauseQueue:
    event_id: str
    caller: Caller


@dataclass(frozen=True)
class ResumeQueue:
    event_id: str
    caller: Caller


@dataclass(frozen=True)
class CloseQueue:
    event_id: str
    caller: Caller


Command = (
    OpenQueue | JoinQueue | LeaveQueue | CallNext | CompleteEntry | MarkNoShow | PauseQueue | ResumeQueue | CloseQueue
)


@dataclass(frozen=True)
class Joined:
    """A join's answer: the entry, and whether it is new (201) or the caller's existing one (200)."""

    entry: EntryView
    created: bool


Outcome = EntryView | QueueSummary | Joined


def apply_command(queue: Queue | None, command: Command, at: int) -> tuple[Queue, Outcome]:
    """Apply one command at time `at` (epoch ms); returns the queue (new for an open) and the answer.

    Raises a `QueueError` before any event is triggered, so a refused command changes nothing.
    """
    if isinstance(command, OpenQueue):
        if queue is not None:
            raise AlreadyOpenError(f"a queue is already open for event {command.event_id}")
        opened = Queue.open(
            command.event_id,
            command.caller.user_id,
            command.name,
            command.capacity,
            command.service_seconds,
            requires_payment=command.requires_payment,
            at=at,
        )
        return opened, opened.summary()
    if queue is None:
        raise QueueNotFoundError(f"no queue is open for event {command.event_id}")
    if isinstance(command, JoinQueue):
        entry, created = queue.join(command.caller.user_id, command.entry_id, at)
        return queue, Joined(entry, created)
    if isinstance(command, LeaveQueue):
        return queue, queue.leave(command.caller.user_id, at)
    _require_owner(queue, command.caller)
    return queue, _apply_owner_command(queue, command, at)


def _require_owner(queue: Queue, caller: Caller) -> None:
    if not caller.is_service and caller.user_id != queue.owner_id:
        raise NotOwnerError(f"only the owner of the queue of event {queue.event_id} may do this")


def _apply_owner_command(queue: Queue, command: Command, at: int) -> Outcome:
    if isinstance(command, CallNext):
        return queue.call_next(at)
    if isinstance(command, CompleteEntry):
        return queue.complete(command.entry_id, at)
    if isinstance(command, MarkNoShow):
        return queue.no_show(command.entry_id, at)
    if isinstance(command, PauseQueue):
        queue.pause(at)
    elif isinstance(command, ResumeQueue):
        queue.resume(at)
    elif isinstance(command, CloseQueue):
        queue.close(at)
    return queue.summary()
