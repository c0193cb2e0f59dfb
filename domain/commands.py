"""Commands (imperative, plain data) and the one function that applies them to aggregates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from uuid import NAMESPACE_URL, uuid5

from domain.errors import AlreadyOpenError, NotOwnerError, QueueError, QueueNotFoundError
from domain.notifications import Notification
from domain.queue import EntryView, Queue, QueueSummary, queue_id_for
from domain.stripe import (
    AccountStatus,
    Fact,
    Payment,
    PaymentOutcome,
    StripeAccount,
    StripeEnvelope,
    StripeEvent,
    account_id_for,
    payment_id_for,
    read_fact,
    stripe_event_id_for,
)

if TYPE_CHECKING:
    from uuid import UUID

    from eventsourcing.domain import Aggregate


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


QueueCommand = (
    OpenQueue | JoinQueue | LeaveQueue | CallNext | CompleteEntry | MarkNoShow | PauseQueue | ResumeQueue | CloseQueue
)


@dataclass(frozen=True)
class RecordStripeEvent:
    """Record a verified Stripe event once; what it means is worked out later (`ProcessStripeEvent`)."""

    envelope: StripeEnvelope
    payload: str


@dataclass(frozen=True)
class ProcessStripeEvent:
    """Apply a recorded Stripe event's fact to the account or payment (and admit a paid user)."""

    stripe_id: str
    created: int
    fact: Fact
    entry_id: str  # for a paid admission: ids are passed in


@dataclass(frozen=True)
class LinkStripeAccount:
    caller: Caller
    account_id: str
    user_id: str


@dataclass(frozen=True)
class SendNotification:
    caller: Caller
    notification_id: UUID
    user_id: str
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


Command = QueueCommand | RecordStripeEvent | ProcessStripeEvent | LinkStripeAccount | SendNotification


@dataclass(frozen=True)
class Joined:
    """A join's answer: the entry, and whether it is new (201) or the caller's existing one (200)."""

    entry: EntryView
    created: bool


@dataclass(frozen=True)
class Recorded:
    """A Stripe event's record: `duplicate` when that Stripe event id was recorded before."""

    stripe_id: str
    duplicate: bool


@dataclass(frozen=True)
class Processed:
    """What a Stripe event changed: `applied` is False for stale, duplicate or unmatched ones."""

    applied: bool


@dataclass(frozen=True)
class AccountView:
    account_id: str
    user_id: str | None
    charges_enabled: bool
    payouts_enabled: bool
    details_submitted: bool
    requirements_due: list[str]
    updated_at: int | None


@dataclass(frozen=True)
class NotificationSent:
    notification_id: str
    user_id: str
    type: str
    data: dict[str, Any]
    created_at: int


Outcome = EntryView | QueueSummary | Joined | Recorded | Processed | AccountView | NotificationSent


class Workspace(Protocol):
    """The aggregates a batch works on: loaded once, saved together."""

    def get(self, aggregate_id: UUID, *, optimistic: bool = False) -> Aggregate | None:
        """The aggregate, or None. `optimistic`: the workspace may answer from what it already
        holds (or None) without reading the store; a wrong guess collides on the store's unique
        (id, version) key when saved, and the batch is run again reading everything."""

    def add(self, aggregate: Aggregate) -> None:
        """A new or changed aggregate to save with the batch."""

    def recorded(self, aggregate_id: UUID) -> bool:
        """Whether an immutable record (e.g. a Stripe event) with this id is stored or in the batch;
        optimistic like `get`: a record this process has never seen may be taken as new, and the
        save then collides and the batch runs again reading the store."""


def stripe_policy(received: StripeEvent.Received) -> ProcessStripeEvent | None:
    """What a recorded Stripe event asks for: its fact applied (None: a type Lineup ignores).
    The entry id of a paid admission is derived from the Stripe event id: processing the same
    event again (after a crash before commit) makes the same entry."""
    fact = read_fact(received.type, received.payload)
    if fact is None:
        return None
    entry_id = str(uuid5(NAMESPACE_URL, f"/stripe/events/{received.stripe_id}/entry"))
    return ProcessStripeEvent(received.stripe_id, received.created, fact, entry_id)


def lock_ids(command: Command) -> list[UUID]:
    """The queues a command may change: writers take turns on them (see Queues.execute)."""
    if isinstance(command, ProcessStripeEvent):
        fact = command.fact
        if isinstance(fact, PaymentOutcome) and fact.event_id:
            return [queue_id_for(fact.event_id)]
        return []
    if isinstance(command, RecordStripeEvent | LinkStripeAccount | SendNotification):
        return []
    return [queue_id_for(command.event_id)]


def apply_command(workspace: Workspace, command: Command, at: int) -> Outcome:
    """Apply one command at time `at` (epoch ms) to the workspace's aggregates; returns the answer.

    Raises a `QueueError` before any event is triggered, so a refused command changes nothing.
    """
    if isinstance(command, RecordStripeEvent):
        return _record_stripe_event(workspace, command, at)
    if isinstance(command, ProcessStripeEvent):
        return _process_stripe_event(workspace, command, at)
    if isinstance(command, LinkStripeAccount):
        return _link_stripe_account(workspace, command, at)
    if isinstance(command, SendNotification):
        return _send_notification(workspace, command, at)
    queue_id = queue_id_for(command.event_id)
    found = workspace.get(queue_id)
    queue, outcome = apply_queue_command(found if isinstance(found, Queue) else None, command, at)
    workspace.add(queue)
    return outcome


def apply_queue_command(queue: Queue | None, command: QueueCommand, at: int) -> tuple[Queue, Outcome]:
    """Apply one queue command; returns the queue (new for an open) and the answer."""
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


def _record_stripe_event(workspace: Workspace, command: RecordStripeEvent, at: int) -> Recorded:
    stripe_id = command.envelope.id
    if workspace.recorded(stripe_event_id_for(stripe_id)):
        return Recorded(stripe_id, duplicate=True)
    workspace.add(StripeEvent.receive(command.envelope, command.payload, at))
    return Recorded(stripe_id, duplicate=False)


def _account(workspace: Workspace, account_id: str, at: int) -> StripeAccount:
    found = workspace.get(account_id_for(account_id), optimistic=True)
    if isinstance(found, StripeAccount):
        return found
    return StripeAccount(account_id=account_id, at=at)


def _process_stripe_event(workspace: Workspace, command: ProcessStripeEvent, at: int) -> Processed:
    fact = command.fact
    if isinstance(fact, AccountStatus):
        account = _account(workspace, fact.account_id, at)
        applied = account.update(command.stripe_id, command.created, fact, at)
        workspace.add(account)
        return Processed(applied)
    found = workspace.get(payment_id_for(fact.payment_id), optimistic=True)
    payment = found if isinstance(found, Payment) else Payment(payment_id=fact.payment_id, at=at)
    first_success = payment.record(command.stripe_id, command.created, fact, at)
    if first_success and not payment.admitted:
        _admit(workspace, payment, fact, command.entry_id, at)
    workspace.add(payment)
    return Processed(applied=bool(payment.pending_events))


def _admit(workspace: Workspace, payment: Payment, fact: PaymentOutcome, entry_id: str, at: int) -> None:
    """A paid user joins the queue named in the payment's metadata (the payment stands in for the
    payment requirement), once: only a payment's first success admits."""
    event_id, user_id = fact.event_id, fact.user_id
    if not event_id or not user_id:
        return
    found = workspace.get(queue_id_for(event_id))
    if not isinstance(found, Queue):
        payment.refuse_admission(event_id, user_id, "not_found", at)
        return
    try:
        entry, _ = found.join(user_id, entry_id, at, paid=True)
    except QueueError as error:
        payment.refuse_admission(event_id, user_id, error.code, at)
        return
    workspace.add(found)
    payment.admit(event_id, user_id, entry.entry_id, at)


def _link_stripe_account(workspace: Workspace, command: LinkStripeAccount, at: int) -> AccountView:
    if not command.caller.is_service:
        raise NotOwnerError("only a service may link a Stripe account to a user")
    account = _account(workspace, command.account_id, at)
    account.link(command.user_id, at)
    workspace.add(account)
    status = account.status
    return AccountView(
        account_id=account.account_id,
        user_id=account.user_id,
        charges_enabled=bool(status and status[0]),
        payouts_enabled=bool(status and status[1]),
        details_submitted=bool(status and status[2]),
        requirements_due=list(status[3]) if status else [],
        updated_at=account.latest[0] if account.latest else None,
    )


def _send_notification(workspace: Workspace, command: SendNotification, at: int) -> NotificationSent:
    if not command.caller.is_service:
        raise NotOwnerError("only a service may send notifications")
    notification = Notification.send(
        command.notification_id, command.user_id, command.kind, command.data, command.caller.user_id, at
    )
    workspace.add(notification)
    return NotificationSent(str(notification.id), command.user_id, command.kind, command.data, at)


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
