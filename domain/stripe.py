"""The Stripe context: verified Stripe events, connected accounts and payments.

Stripe delivers each event at least once, in no particular order, sometimes as two Event objects
for one change. So: a received event is its own aggregate whose id is derived from the Stripe
event id (a second record of it collides and changes nothing), and the aggregates it affects
compare Stripe's `created` (then the event id, so that ties resolve the same way in any order)
before applying anything: an older event never moves state back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

ACCOUNT_UPDATED = "account.updated"
PAYMENT_SUCCEEDED = "payment_intent.succeeded"
PAYMENT_FAILED = "payment_intent.payment_failed"
HANDLED_TYPES = frozenset({ACCOUNT_UPDATED, PAYMENT_SUCCEEDED, PAYMENT_FAILED})
SUCCEEDED, FAILED = "succeeded", "failed"
ACTIVE_MESSAGE = "Your Stripe account is now active!"


def stripe_event_id_for(stripe_event_id: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/stripe/events/{stripe_event_id}")


def account_id_for(account_id: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/stripe/accounts/{account_id}")


def payment_id_for(payment_id: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/stripe/payments/{payment_id}")


class NotAStripeEventError(ValueError):
    """A verified body that is not a Stripe event object."""


@dataclass(frozen=True)
class StripeEnvelope:
    """What every Stripe event has: its id, type and creation time (epoch seconds)."""

    id: str
    type: str
    created: int

    @classmethod
    def read(cls, payload: object) -> StripeEnvelope:
        """The envelope of a decoded event body; raises NotAStripeEventError when it is not one."""
        if not isinstance(payload, dict):
            raise NotAStripeEventError("the body is not a JSON object")
        stripe_id, kind, created = payload.get("id"), payload.get("type"), payload.get("created")
        if payload.get("object", "event") != "event":
            raise NotAStripeEventError(f"object is {payload.get('object')!r}, not 'event'")
        if not isinstance(stripe_id, str) or not stripe_id:
            raise NotAStripeEventError("the event has no id")
        if not isinstance(kind, str) or not kind:
            raise NotAStripeEventError("the event has no type")
        if not isinstance(created, int) or isinstance(created, bool):
            raise NotAStripeEventError("the event has no integer 'created'")
        data = payload.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
            raise NotAStripeEventError("the event has no data.object")
        return cls(stripe_id, kind, created)


# Facts read from a received event ---------------------------------------------------------------


@dataclass(frozen=True)
class AccountStatus:
    """An `account.updated`: the connected account's state as of `created`."""

    account_id: str
    user_id: str | None
    charges_enabled: bool
    payouts_enabled: bool
    details_submitted: bool
    requirements_due: tuple[str, ...]


@dataclass(frozen=True)
class PaymentOutcome:
    """A `payment_intent.succeeded` or `payment_intent.payment_failed`."""

    payment_id: str
    user_id: str | None
    amount: int
    currency: str
    succeeded: bool
    decline_message: str | None
    event_id: str | None  # the Lineup event (queue) the payment admits to, from metadata


Fact = AccountStatus | PaymentOutcome


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def read_fact(kind: str, payload: str) -> Fact | None:
    """The fact a received event states, or None for types (and shapes) Lineup does not handle."""
    if kind not in HANDLED_TYPES:
        return None
    obj = json.loads(payload).get("data", {}).get("object", {})
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    object_id = _text(obj.get("id"))
    if object_id is None:
        return None
    if kind == ACCOUNT_UPDATED:
        requirements = obj.get("requirements") if isinstance(obj.get("requirements"), dict) else {}
        due = requirements.get("currently_due") or []
        return AccountStatus(
            account_id=object_id,
            user_id=_text(metadata.get("lineup_user_id")),
            charges_enabled=obj.get("charges_enabled") is True,
            payouts_enabled=obj.get("payouts_enabled") is True,
            details_submitted=obj.get("details_submitted") is True,
            requirements_due=tuple(str(item) for item in due if isinstance(item, str)),
        )
    error = obj.get("last_payment_error") if isinstance(obj.get("last_payment_error"), dict) else {}
    amount = obj.get("amount")
    return PaymentOutcome(
        payment_id=object_id,
        user_id=_text(metadata.get("lineup_user_id")),
        amount=amount if isinstance(amount, int) and not isinstance(amount, bool) else 0,
        currency=_text(obj.get("currency")) or "",
        succeeded=kind == PAYMENT_SUCCEEDED,
        decline_message=None if kind == PAYMENT_SUCCEEDED else _text(error.get("message")),
        event_id=_text(metadata.get("lineup_event_id")),
    )


# Aggregates ---------------------------------------------------------------------------------------


class StripeEvent(Aggregate):
    """A verified Stripe event, recorded once (its id comes from the Stripe event id)."""

    class Received(Aggregate.Created):
        stripe_id: str
        type: str
        created: int
        payload: str  # the raw JSON body as Stripe sent it: the audit record
        at: int

    @staticmethod
    def create_id(stripe_id: str) -> UUID:
        return stripe_event_id_for(stripe_id)

    @event(Received)
    def __init__(self, stripe_id: str, type: str, created: int, payload: str, at: int) -> None:
        self.stripe_id, self.type, self.created, self.at = stripe_id, type, created, at
        del payload  # kept in the log, not in memory

    @classmethod
    def receive(cls, envelope: StripeEnvelope, payload: str, at: int) -> StripeEvent:
        return cls(stripe_id=envelope.id, type=envelope.type, created=envelope.created, payload=payload, at=at)


Order = tuple[int, str]  # (Stripe created, Stripe event id): later wins, ties by id


class StripeAccount(Aggregate):
    """A connected account: its status follows the newest `account.updated` by `created`."""

    class Registered(Aggregate.Created):
        account_id: str
        at: int

    class Linked(Aggregate.Event):
        account_id: str
        user_id: str
        previous_user_id: str | None
        at: int

    class Updated(Aggregate.Event):
        account_id: str
        stripe_id: str
        created: int
        charges_enabled: bool
        payouts_enabled: bool
        details_submitted: bool
        requirements_due: list[str]
        changed: bool  # the visible status differs from before (a notification is due)
        activated: bool  # charges became enabled with this update
        user_id: str | None  # the linked user when it was applied
        at: int

    @staticmethod
    def create_id(account_id: str) -> UUID:
        return account_id_for(account_id)

    @event(Registered)
    def __init__(self, account_id: str, at: int) -> None:
        self.account_id = account_id
        self.user_id: str | None = None
        self.latest: Order | None = None
        self.status: tuple[bool, bool, bool, tuple[str, ...]] | None = None
        self.updated_at = at

    def link(self, user_id: str, at: int) -> None:
        if user_id != self.user_id:
            self._linked(account_id=self.account_id, user_id=user_id, previous_user_id=self.user_id, at=at)

    def update(self, stripe_id: str, created: int, status: AccountStatus, at: int) -> bool:
        """Apply an `account.updated` unless a newer one was applied; returns whether it was."""
        if status.user_id is not None:
            self.link(status.user_id, at)
        if self.latest is not None and (created, stripe_id) <= self.latest:
            return False
        new = (status.charges_enabled, status.payouts_enabled, status.details_submitted, status.requirements_due)
        self._updated(
            account_id=self.account_id,
            stripe_id=stripe_id,
            created=created,
            charges_enabled=status.charges_enabled,
            payouts_enabled=status.payouts_enabled,
            details_submitted=status.details_submitted,
            requirements_due=list(status.requirements_due),
            changed=new != self.status,
            activated=status.charges_enabled and not (self.status is not None and self.status[0]),
            user_id=self.user_id,
            at=at,
        )
        return True

    @event(Linked)
    def _linked(self, account_id: str, user_id: str, previous_user_id: str | None, at: int) -> None:
        del account_id, previous_user_id, at
        self.user_id = user_id

    @event(Updated)
    def _updated(  # noqa: PLR0913
        self,
        account_id: str,
        stripe_id: str,
        created: int,
        charges_enabled: bool,  # noqa: FBT001
        payouts_enabled: bool,  # noqa: FBT001
        details_submitted: bool,  # noqa: FBT001
        requirements_due: list[str],
        changed: bool,  # noqa: FBT001
        activated: bool,  # noqa: FBT001
        user_id: str | None,
        at: int,
    ) -> None:
        del account_id, changed, activated, user_id, at
        self.latest = (created, stripe_id)
        self.status = (charges_enabled, payouts_enabled, details_submitted, tuple(requirements_due))


class Payment(Aggregate):
    """A payment intent: failed attempts follow `created` order; a success is final."""

    class Started(Aggregate.Created):
        payment_id: str
        at: int

    class Succeeded(Aggregate.Event):
        payment_id: str
        stripe_id: str
        created: int
        user_id: str | None
        amount: int
        currency: str
        event_id: str | None
        at: int

    class Failed(Aggregate.Event):
        payment_id: str
        stripe_id: str
        created: int
        user_id: str | None
        amount: int
        currency: str
        event_id: str | None
        decline_message: str | None
        at: int

    class Admitted(Aggregate.Event):
        payment_id: str
        event_id: str
        user_id: str
        entry_id: str
        at: int

    class AdmissionRefused(Aggregate.Event):
        payment_id: str
        event_id: str
        user_id: str
        reason: str
        at: int

    @staticmethod
    def create_id(payment_id: str) -> UUID:
        return payment_id_for(payment_id)

    @event(Started)
    def __init__(self, payment_id: str, at: int) -> None:
        self.payment_id = payment_id
        self.status: str | None = None
        self.latest: Order | None = None
        self.admitted = False
        self.started_at = at

    def record(self, stripe_id: str, created: int, outcome: PaymentOutcome, at: int) -> bool:
        """Apply an outcome; returns True only when this is the payment's first success."""
        if self.status == SUCCEEDED:
            return False
        if not outcome.succeeded and self.latest is not None and (created, stripe_id) <= self.latest:
            return False
        fields: dict[str, Any] = {
            "payment_id": self.payment_id,
            "stripe_id": stripe_id,
            "created": created,
            "user_id": outcome.user_id,
            "amount": outcome.amount,
            "currency": outcome.currency,
            "event_id": outcome.event_id,
            "at": at,
        }
        if outcome.succeeded:
            self._succeeded(**fields)
            return True
        self._failed(decline_message=outcome.decline_message, **fields)
        return False

    def admit(self, event_id: str, user_id: str, entry_id: str, at: int) -> None:
        self._admitted(payment_id=self.payment_id, event_id=event_id, user_id=user_id, entry_id=entry_id, at=at)

    def refuse_admission(self, event_id: str, user_id: str, reason: str, at: int) -> None:
        self._admission_refused(payment_id=self.payment_id, event_id=event_id, user_id=user_id, reason=reason, at=at)

    @event(Succeeded)
    def _succeeded(  # noqa: PLR0913
        self,
        payment_id: str,
        stripe_id: str,
        created: int,
        user_id: str | None,
        amount: int,
        currency: str,
        event_id: str | None,
        at: int,
    ) -> None:
        del payment_id, user_id, amount, currency, event_id, at
        self.status = SUCCEEDED
        self.latest = (created, stripe_id)

    @event(Failed)
    def _failed(  # noqa: PLR0913
        self,
        payment_id: str,
        stripe_id: str,
        created: int,
        user_id: str | None,
        amount: int,
        currency: str,
        event_id: str | None,
        decline_message: str | None,
        at: int,
    ) -> None:
        del payment_id, user_id, amount, currency, event_id, decline_message, at
        self.status = FAILED
        self.latest = (created, stripe_id)

    @event(Admitted)
    def _admitted(self, payment_id: str, event_id: str, user_id: str, entry_id: str, at: int) -> None:
        del payment_id, event_id, user_id, entry_id, at
        self.admitted = True

    @event(AdmissionRefused)
    def _admission_refused(self, payment_id: str, event_id: str, user_id: str, reason: str, at: int) -> None:
        del payment_id, event_id, user_id, reason, at
