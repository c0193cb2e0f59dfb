"""The `notifications` read model: what each user is told, derived from events (one per event).

Queue moments (called, next in line), Stripe account changes, payment outcomes and the
notifications backends send all become rows here. A derived notification's id comes from the
event that caused it, so a rebuild gives the same ids and a redelivered Stripe event, which
produces no second domain event, produces no second notification.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import singledispatchmethod
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from domain.notifications import Notification
from domain.queue import Queue
from domain.stripe import ACTIVE_MESSAGE, Payment, StripeAccount
from projections.base import Projection, Writer

CALLED_MESSAGE = "It's your turn"
NEXT_MESSAGE = "You're next"


def notification_id_for(originator_id: UUID, version: int) -> str:
    """The id of the notification caused by one domain event."""
    return str(uuid5(NAMESPACE_URL, f"/notifications/{originator_id}/{version}"))


class NotificationsWriter(Writer, ABC):
    @abstractmethod
    def notification_created(
        self, notification_id: str, user_id: str, kind: str, data: dict[str, Any], at: int
    ) -> None:
        """A notification created at `at` (epoch ms); the writer decides when it expires. Those of one
        `at` (one batch) are listed in the order of their causing events, by `self.position`."""


class NotificationsProjection(Projection[NotificationsWriter]):
    name = "notifications"

    @singledispatchmethod
    def process(self, domain_event: object, writer: NotificationsWriter) -> None:
        """Other events notify nobody."""

    @process.register
    def _(self, domain_event: Notification.Sent, writer: NotificationsWriter) -> None:
        e = domain_event
        writer.notification_created(str(e.originator_id), e.user_id, e.type, e.data, e.at)

    @process.register
    def _(self, domain_event: Queue.EntryCalled, writer: NotificationsWriter) -> None:
        e = domain_event
        if e.user_id:  # events recorded before the field existed carry ""
            data = {"event_id": e.event_id, "entry_id": e.entry_id, "message": CALLED_MESSAGE}
            writer.notification_created(_id(e), e.user_id, "queue.called", data, e.at)

    @process.register
    def _(self, domain_event: Queue.NextInLine, writer: NotificationsWriter) -> None:
        e = domain_event
        data = {"event_id": e.event_id, "entry_id": e.entry_id, "message": NEXT_MESSAGE}
        writer.notification_created(_id(e), e.user_id, "queue.next", data, e.at)

    @process.register
    def _(self, domain_event: StripeAccount.Updated, writer: NotificationsWriter) -> None:
        e = domain_event
        if not e.changed or e.user_id is None:
            return
        data: dict[str, Any] = {
            "account_id": e.account_id,
            "charges_enabled": e.charges_enabled,
            "payouts_enabled": e.payouts_enabled,
            "details_submitted": e.details_submitted,
            "requirements_due": e.requirements_due,
        }
        if e.activated:
            data["message"] = ACTIVE_MESSAGE
        writer.notification_created(_id(e), e.user_id, "stripe.account.updated", data, e.at)

    @process.register
    def _(self, domain_event: Payment.Succeeded, writer: NotificationsWriter) -> None:
        e = domain_event
        if e.user_id is not None:
            data = {"payment_id": e.payment_id, "amount": e.amount, "currency": e.currency, "event_id": e.event_id}
            writer.notification_created(_id(e), e.user_id, "payment.succeeded", data, e.at)

    @process.register
    def _(self, domain_event: Payment.Failed, writer: NotificationsWriter) -> None:
        e = domain_event
        if e.user_id is not None:
            data = {
                "payment_id": e.payment_id,
                "amount": e.amount,
                "currency": e.currency,
                "message": e.decline_message,
            }
            writer.notification_created(_id(e), e.user_id, "payment.failed", data, e.at)


def _id(domain_event: Queue.Event | StripeAccount.Event | Payment.Event) -> str:
    return notification_id_for(domain_event.originator_id, domain_event.originator_version)
