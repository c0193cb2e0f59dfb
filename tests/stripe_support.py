"""Stripe webhook test support: the captured fixture events, rewritten copies of them, and local signing.

Nothing here talks to Stripe. A `Stripe-Signature` header is computed the way Stripe computes it:
`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" keyed with the whsec_ secret>`.

The fixtures are the top-level `*.json` files of `$LINEUP_STRIPE_FIXTURES` (default
`/work/shared/stripe-fixtures`; its README.txt says where each one comes from). Two dj-stripe files
share one event id; `fixture_events()` gives the second one a derived id so that no two differ only in
content, as the README asks.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(os.environ.get("LINEUP_STRIPE_FIXTURES", "/work/shared/stripe-fixtures"))
WEBHOOK_PATH = "/api/webhooks/stripe-connect"
SIGNATURE_HEADER = "Stripe-Signature"
TOLERANCE_SECONDS = 300

Event = dict[str, Any]

# The fixtures the tests lean on by role (file stems).
ACCOUNT_ONBOARDED = "account.updated.djstripe-express-onboarded"  # charges/payouts/details all true, nothing due
ACCOUNT_INCOMPLETE = "account.updated.djstripe-standard-incomplete"  # all false, 7 items currently due
ACCOUNT_OPENAPI = "account.updated.openapi-constructed"  # all false, 6 items currently due
ACCOUNT_COMPANY = "account.updated.pay-rails-company"  # all true, nothing due
PAYMENT_SUCCEEDED = "payment_intent.succeeded.djstripe-destination-constructed"  # 190200 usd, status succeeded
PAYMENT_FAILED = "payment_intent.payment_failed.stripe-java-constructed"  # 100 eur, "Your card was declined."
PAYMENT_SUCCEEDED_OPENAPI = "payment_intent.succeeded.openapi-constructed"  # schema-shaped, 1099 usd
PAYMENT_FAILED_OPENAPI = "payment_intent.payment_failed.openapi-constructed"  # same PI id as the one above
OTHER_TYPE = "official-openapi/event.plan.created"  # the one Event fixture Stripe ships: a type Lineup ignores


def fixtures_available() -> bool:
    return (FIXTURES / f"{ACCOUNT_ONBOARDED}.json").is_file()


def fixture_path(name: str) -> Path:
    return FIXTURES / f"{name}.json"


def fixture_bytes(name: str) -> bytes:
    """The file exactly as captured (for tests that sign the original bytes)."""
    return fixture_path(name).read_bytes()


def fixture(name: str) -> Event:
    """A fresh parsed copy of one fixture event (callers may mutate it)."""
    event = json.loads(fixture_bytes(name))
    assert isinstance(event, dict)
    assert event["object"] == "event", name
    return event


def fixture_names() -> list[str]:
    """Every top-level fixture event (the stripe-cli trigger recipes and raw objects live in sub-directories)."""
    return sorted(path.stem for path in FIXTURES.glob("*.json"))


def fixture_events() -> dict[str, Event]:
    """Every top-level fixture by name; where two share an event id, the later ones get a derived id."""
    events: dict[str, Event] = {}
    seen: set[str] = set()
    for name in fixture_names():
        event = fixture(name)
        if event["id"] in seen:
            event["id"] = f"{event['id']}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
        seen.add(event["id"])
        events[name] = event
    return events


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def obj(event: Event) -> dict[str, Any]:
    """The event's data.object."""
    data = event["data"]["object"]
    assert isinstance(data, dict)
    return data


def rewrite(
    event: Event,
    *,
    event_id: str | None = None,
    created: int | None = None,
    object_id: str | None = None,
    metadata: dict[str, str] | None = None,
    amount: int | None = None,
) -> Event:
    """A deep copy with new ids/created/metadata; `object_id` also moves the Connect `account` field along."""
    event = copy.deepcopy(event)
    if event_id is not None:
        event["id"] = event_id
    if created is not None:
        event["created"] = created
    target = obj(event)
    if object_id is not None:
        target["id"] = object_id
        if target.get("object") == "account" and "account" in event:
            event["account"] = object_id
    if metadata is not None:
        target["metadata"] = dict(metadata)
    if amount is not None:
        target["amount"] = amount
    return event


def account_event(
    template: str,
    *,
    account_id: str,
    created: int,
    user_id: str | None = None,
    event_id: str | None = None,
) -> Event:
    metadata = {"lineup_user_id": user_id} if user_id is not None else None
    return rewrite(
        fixture(template),
        event_id=event_id or new_id("evt"),
        created=created,
        object_id=account_id,
        metadata=metadata,
    )


def payment_event(
    template: str,
    *,
    payment_id: str,
    created: int,
    user_id: str | None = None,
    event_id: str | None = None,
    queue_event_id: str | None = None,
    amount: int | None = None,
) -> Event:
    metadata: dict[str, str] = {}
    if user_id is not None:
        metadata["lineup_user_id"] = user_id
    if queue_event_id is not None:
        metadata["lineup_event_id"] = queue_event_id
    return rewrite(
        fixture(template),
        event_id=event_id or new_id("evt"),
        created=created,
        object_id=payment_id,
        metadata=metadata,
        amount=amount,
    )


def account_state(event: Event) -> dict[str, Any]:
    """What GET /users/{id}/stripe-account should answer once this event is the account's newest."""
    account = obj(event)
    return {
        "account_id": account["id"],
        "charges_enabled": account["charges_enabled"],
        "payouts_enabled": account["payouts_enabled"],
        "details_submitted": account["details_submitted"],
        "requirements_due": list((account.get("requirements") or {}).get("currently_due") or []),
        "updated_at": event["created"],
    }


def decline_message(event: Event) -> str | None:
    error = obj(event).get("last_payment_error") or {}
    message = error.get("message")
    return message if isinstance(message, str) else None


def body_of(event: Event) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def signature(body: bytes, secret: str, timestamp: int) -> str:
    """The hex v1 signature of `body` at `timestamp` (over raw bytes, so a non-UTF-8 body can be signed too)."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def signature_header(body: bytes, *secrets: str, timestamp: int | None = None) -> str:
    """`t=...,v1=...[,v1=...]`: one v1 per secret, as Stripe sends while an endpoint's secret is being rolled."""
    at = int(time.time()) if timestamp is None else timestamp
    return ",".join([f"t={at}", *(f"v1={signature(body, secret, at)}" for secret in secrets)])


@dataclass(frozen=True)
class Delivery:
    """One POST Stripe would make: the raw body and its headers."""

    event_id: str
    body: bytes
    headers: dict[str, str]


def delivery(event: Event | bytes, secret: str, *, timestamp: int | None = None) -> Delivery:
    body = event if isinstance(event, bytes) else body_of(event)
    event_id = str(json.loads(body)["id"])
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        SIGNATURE_HEADER: signature_header(body, secret, timestamp=timestamp),
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    }
    return Delivery(event_id, body, headers)
