"""The `stripe` read model: connected accounts (per user) and payments (per user)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import singledispatchmethod

from domain.stripe import FAILED, SUCCEEDED, Payment, StripeAccount
from projections.base import Projection, Writer


class StripeWriter(Writer, ABC):
    @abstractmethod
    def account_registered(self, account_id: str) -> None: ...

    @abstractmethod
    def account_linked(self, account_id: str, user_id: str, previous_user_id: str | None) -> None: ...

    @abstractmethod
    def account_updated(  # noqa: PLR0913
        self,
        account_id: str,
        *,
        charges_enabled: bool,
        payouts_enabled: bool,
        details_submitted: bool,
        requirements_due: list[str],
        created: int,
    ) -> None:
        """The account's status as of Stripe's `created` (epoch seconds)."""

    @abstractmethod
    def payment_recorded(  # noqa: PLR0913
        self,
        payment_id: str,
        *,
        user_id: str | None,
        amount: int,
        currency: str,
        status: str,
        decline_message: str | None,
        event_id: str | None,
        created: int,
    ) -> None: ...

    @abstractmethod
    def payment_admitted(self, payment_id: str) -> None: ...


class StripeProjection(Projection[StripeWriter]):
    name = "stripe"

    @singledispatchmethod
    def process(self, domain_event: object, writer: StripeWriter) -> None:
        """Other events change nothing here."""

    @process.register
    def _(self, domain_event: StripeAccount.Registered, writer: StripeWriter) -> None:
        writer.account_registered(domain_event.account_id)

    @process.register
    def _(self, domain_event: StripeAccount.Linked, writer: StripeWriter) -> None:
        e = domain_event
        writer.account_linked(e.account_id, e.user_id, e.previous_user_id)

    @process.register
    def _(self, domain_event: StripeAccount.Updated, writer: StripeWriter) -> None:
        e = domain_event
        writer.account_updated(
            e.account_id,
            charges_enabled=e.charges_enabled,
            payouts_enabled=e.payouts_enabled,
            details_submitted=e.details_submitted,
            requirements_due=e.requirements_due,
            created=e.created,
        )

    @process.register
    def _(self, domain_event: Payment.Succeeded, writer: StripeWriter) -> None:
        e = domain_event
        writer.payment_recorded(
            e.payment_id,
            user_id=e.user_id,
            amount=e.amount,
            currency=e.currency,
            status=SUCCEEDED,
            decline_message=None,
            event_id=e.event_id,
            created=e.created,
        )

    @process.register
    def _(self, domain_event: Payment.Failed, writer: StripeWriter) -> None:
        e = domain_event
        writer.payment_recorded(
            e.payment_id,
            user_id=e.user_id,
            amount=e.amount,
            currency=e.currency,
            status=FAILED,
            decline_message=e.decline_message,
            event_id=e.event_id,
            created=e.created,
        )

    @process.register
    def _(self, domain_event: Payment.Admitted, writer: StripeWriter) -> None:
        writer.payment_admitted(domain_event.payment_id)
