"""Stripe over HTTP: the Connect webhook, linking accounts, and a user's account and payments."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import MediaType, Request, Response, get, post

from adapters.stripe_webhooks import RejectedError, verify
from domain.commands import AccountView, LinkStripeAccount, Recorded, RecordStripeEvent
from domain.errors import InvalidCommandError, NotFoundError
from entrypoints.auth import require_self
from entrypoints.bootstrap import Container
from entrypoints.errors import error_body
from entrypoints.submit import CallerRequest, run


class StripeAccountOut(msgspec.Struct):
    account_id: str
    charges_enabled: bool
    payouts_enabled: bool
    details_submitted: bool
    requirements_due: list[str]
    updated_at: int | None  # Stripe's `created` of the event that set this state (epoch seconds)


class PaymentOut(msgspec.Struct):
    payment_id: str
    user_id: str | None
    amount: int
    currency: str
    status: str  # succeeded | failed
    decline_message: str | None
    event_id: str | None  # the Lineup event whose queue the payment admits to (metadata.lineup_event_id)
    admitted: bool
    updated_at: int  # Stripe's `created` (epoch seconds)


class LinkIn(msgspec.Struct, forbid_unknown_fields=True):
    account_id: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class WebhookOut(msgspec.Struct):
    received: bool
    duplicate: bool  # this Stripe event id was recorded before: nothing happens twice


async def accept_webhook(container: Container, body: bytes, signature: str | None) -> tuple[int, object]:
    """The webhook's answer as (status, JSON body), for the Litestar route and the fast path
    (entrypoints/fast_paths.py) alike: 503 without a secret, 400 for a delivery that does not
    verify, otherwise 200 once the event is durably recorded (or was already)."""
    secrets = container.settings.stripe_webhook_secrets
    if not secrets:
        return 503, error_body("unavailable", "no STRIPE_WEBHOOK_SECRET is configured")
    try:
        envelope, payload = verify(body, signature, secrets)
    except RejectedError as error:
        return 400, error_body("bad_request", str(error))
    recorded = await run(container, RecordStripeEvent(envelope, payload))
    assert isinstance(recorded, Recorded)
    return 200, WebhookOut(received=True, duplicate=recorded.duplicate)


@post(
    "/api/webhooks/stripe-connect",
    status_code=200,
    tags=["stripe"],
    summary="Stripe: a signed event, recorded durably before 200 (processed asynchronously)",
)
async def stripe_webhook(request: Request[Any, Any, Any], container: Container) -> Response[Any]:
    """`lineup serve` answers this path before Litestar routes it (entrypoints/fast_paths.py);
    this route documents it in the OpenAPI schema and serves it wherever the app runs alone."""
    status, answer = await accept_webhook(container, await request.body(), request.headers.get("stripe-signature"))
    return Response(answer, status_code=status, media_type=MediaType.JSON)


@post("/stripe/accounts", status_code=200, tags=["stripe"], summary="Service: link a connected account to a user")
async def link_account(request: CallerRequest, container: Container, data: LinkIn | None = None) -> StripeAccountOut:
    if data is None:
        raise InvalidCommandError('a JSON body is required, e.g. {"account_id": "acct_1", "user_id": "u1"}')
    view = await run(container, LinkStripeAccount(request.user, data.account_id, data.user_id))
    assert isinstance(view, AccountView)
    return msgspec.convert(view, StripeAccountOut, from_attributes=True)


@get(
    "/users/{user_id:str}/stripe-account",
    sync_to_thread=True,
    tags=["stripe"],
    summary="The user's connected account (the most recently updated one)",
)
def stripe_account_of_user(user_id: str, request: CallerRequest, container: Container) -> StripeAccountOut:
    require_self(request.user, user_id)
    container.caught_up()
    row = container.stripe.account_of(user_id)
    if row is None:
        raise NotFoundError(f"no Stripe account is linked to user {user_id}")
    return msgspec.convert(row, StripeAccountOut)


@get("/users/{user_id:str}/payments", sync_to_thread=True, tags=["stripe"], summary="The user's payments, newest first")
def payments_of_user(user_id: str, request: CallerRequest, container: Container) -> list[PaymentOut]:
    require_self(request.user, user_id)
    container.caught_up()
    return [msgspec.convert(row, PaymentOut) for row in container.stripe.payments_of(user_id)]
