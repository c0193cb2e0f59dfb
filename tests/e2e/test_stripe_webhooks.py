"""Stripe webhooks end to end: signed fixture events over real HTTP against a real `lineup serve`.

Every body is a Stripe fixture event (tests/stripe_support.py), signed locally with the secrets this
module gives its server; Stripe's API is never called. Processing after the 200 is asynchronous, so
effects are polled for with a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import socket
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from entrypoints.settings import Settings
from tests import stripe_support as fx
from tests.e2e.conftest import LineupServer, free_port
from tests.e2e.support import DEADLINE, assert_error, connect, eventually, present, recv, uid

pytestmark = pytest.mark.skipif(not fx.fixtures_available(), reason=f"no Stripe fixtures in {fx.FIXTURES}")

OLD_SECRET = "whsec_test_old_0f9b8c7d6e5a4b3c2d1e0f9a8b7c6d5e"
NEW_SECRET = "whsec_test_new_1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d"
SECRET = NEW_SECRET
ACTIVE = "Your Stripe account is now active!"
ACCOUNT_KEYS = {
    "account_id",
    "charges_enabled",
    "payouts_enabled",
    "details_submitted",
    "requirements_due",
    "updated_at",
}
PAYMENT_KEYS = {
    "payment_id",
    "user_id",
    "amount",
    "currency",
    "status",
    "decline_message",
    "event_id",
    "admitted",
    "updated_at",
}
NOTIFICATION_KEYS = {"notification_id", "user_id", "type", "data", "created_at", "expires_at"}

T = TypeVar("T")


@pytest.fixture(scope="module")
def server_settings(database_url: str, module_schema: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """This module's server verifies with two secrets: an endpoint secret being rolled."""
    return Settings(
        database_url=database_url,
        database_schema=module_schema,
        data_dir=tmp_path_factory.mktemp("lineup-stripe"),
        host="127.0.0.1",
        port=free_port(),
        jwt_secret="test-secret-that-is-long-enough-for-hs256",
        stripe_webhook_secrets=(OLD_SECRET, NEW_SECRET),
    )


# Helpers ------------------------------------------------------------------------------------------


def wait_for(read: Callable[..., T | None], *args: Any, deadline: float = DEADLINE) -> T:
    """`read(*args)` once it answers something (not None, not empty)."""
    return eventually(lambda: present(read(*args)), deadline)


def assert_equal(actual: T, expected: T) -> T:
    assert actual == expected
    return actual


def post_raw(http: httpx.Client, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return http.post(fx.WEBHOOK_PATH, content=body, headers=headers)


def send(http: httpx.Client, event: fx.Event | bytes, secret: str = SECRET, **kwargs: Any) -> bool:
    """Deliver one signed event; asserts 200 and returns the `duplicate` flag."""
    delivery = fx.delivery(event, secret, **kwargs)
    response = post_raw(http, delivery.body, delivery.headers)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"received", "duplicate"}, answer
    assert answer["received"] is True
    assert isinstance(answer["duplicate"], bool)
    return bool(answer["duplicate"])


def get(server: LineupServer, http: httpx.Client, path: str, user: str, role: str = "user") -> Any:
    response = http.get(path, headers=server.headers(user, role=role))
    assert response.status_code == 200, f"GET {path}: {response.status_code} {response.text}"
    return response.json()


def account_of(server: LineupServer, http: httpx.Client, user: str) -> dict[str, Any] | None:
    response = http.get(f"/users/{user}/stripe-account", headers=server.headers(user))
    if response.status_code == 404:
        assert_error(response, 404, "not_found")
        return None
    assert response.status_code == 200, response.text
    row = response.json()
    assert set(row) >= ACCOUNT_KEYS, row
    return dict(row)


def payments_of(server: LineupServer, http: httpx.Client, user: str) -> list[dict[str, Any]]:
    rows = get(server, http, f"/users/{user}/payments", user)
    assert isinstance(rows, list)
    for row in rows:
        assert set(row) >= PAYMENT_KEYS, row
        assert row["user_id"] == user
    return rows


def notes_of(server: LineupServer, http: httpx.Client, user: str, kind: str | None = None) -> list[dict[str, Any]]:
    rows = get(server, http, f"/users/{user}/notifications", user)
    assert isinstance(rows, list)
    for row in rows:
        assert set(row) >= NOTIFICATION_KEYS, row
        assert row["user_id"] == user
    return [row for row in rows if kind is None or row["type"] == kind]


def account_data(state: dict[str, Any]) -> dict[str, Any]:
    """The `data` of a stripe.account.updated notification for an account state (without `message`)."""
    return {key: state[key] for key in ACCOUNT_KEYS - {"updated_at"}}


def expected_payment(event: fx.Event, *, admitted: bool = False, status: str | None = None) -> dict[str, Any]:
    pi = fx.obj(event)
    failed = event["type"] == "payment_intent.payment_failed"
    return {
        "payment_id": pi["id"],
        "user_id": (pi.get("metadata") or {}).get("lineup_user_id"),
        "amount": pi["amount"],
        "currency": pi["currency"],
        "status": status or ("failed" if failed else "succeeded"),
        "decline_message": fx.decline_message(event) if failed else None,
        "event_id": (pi.get("metadata") or {}).get("lineup_event_id"),
        "admitted": admitted,
        "updated_at": event["created"],
    }


def strip(row: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {key: row[key] for key in keys}


def open_paid_queue(server: LineupServer, http: httpx.Client, event_id: str, owner: str) -> None:
    response = http.post(
        f"/events/{event_id}/queue",
        json={"name": "Paid signing", "requires_payment": True},
        headers=server.headers(owner),
    )
    assert response.status_code == 201, response.text


# (1) Every fixture ---------------------------------------------------------------------------------


def test_every_fixture_verifies_and_is_handled_or_ignored(server: LineupServer, client: httpx.Client) -> None:
    events = fx.fixture_events()
    assert len(events) == 8
    accounts = {name: event for name, event in events.items() if event["type"] == "account.updated"}
    payments = {name: event for name, event in events.items() if event["type"] != "account.updated"}
    assert len(accounts) == 4
    assert len(payments) == 4
    owners = {name: uid("fx-acct") for name in accounts}
    for name, event in accounts.items():  # the captured accounts carry no lineup_user_id: link them first
        linked = client.post(
            "/stripe/accounts",
            json={"account_id": fx.obj(event)["id"], "user_id": owners[name]},
            headers=server.headers("backend", role="service"),
        )
        assert linked.status_code == 200, linked.text
        assert linked.json()["account_id"] == fx.obj(event)["id"]

    # The original bytes where the id is unique, a re-serialized copy for the one the README says to rewrite.
    originals = {name: fx.fixture_bytes(name) for name in events}
    bodies = {
        name: originals[name] if json.loads(originals[name])["id"] == event["id"] else fx.body_of(event)
        for name, event in events.items()
    }
    assert sum(body is originals[name] for name, body in bodies.items()) == 7
    for name, body in bodies.items():
        assert send(client, body) is False, name
    other = fx.fixture_bytes(fx.OTHER_TYPE)  # plan.created: verified, recorded, ignored
    assert send(client, other) is False
    for name, body in bodies.items():  # the same Stripe event ids again: nothing new
        assert send(client, body, OLD_SECRET) is True, name
    assert send(client, other) is True

    # account.updated: each linked user sees the account's state and gets one notification
    for name, event in accounts.items():
        state = fx.account_state(event)
        user = owners[name]
        assert wait_for(account_of, server, client, user) == state, name
        notes = wait_for(notes_of, server, client, user, "stripe.account.updated")
        assert len(notes) == 1, (name, notes)
        data = dict(notes[0]["data"])
        message = data.pop("message", None)
        assert data == account_data(state), name
        assert message == (ACTIVE if state["charges_enabled"] else None), name

    # The payment fixtures carry no lineup_user_id (recorded, ignored). Give each a user and a fresh
    # event id and payment intent id (the two openapi files share one), then check rows and notifications.
    for name, event in payments.items():
        user = uid("fx-pay")
        copy = fx.rewrite(
            event, event_id=fx.new_id("evt"), object_id=fx.new_id("pi"), metadata={"lineup_user_id": user}
        )
        assert send(client, copy) is False
        expected = expected_payment(copy)
        rows = wait_for(payments_of, server, client, user)
        assert rows == [expected], name
        kind = "payment.failed" if expected["status"] == "failed" else "payment.succeeded"
        notes = wait_for(notes_of, server, client, user, kind)
        assert len(notes) == 1, notes
        data = notes[0]["data"]
        assert (data["payment_id"], data["amount"], data["currency"]) == (
            expected["payment_id"],
            expected["amount"],
            expected["currency"],
        )
        if kind == "payment.failed":
            assert data.get("message") == expected["decline_message"], name
        else:
            assert data.get("event_id") is None, name
        assert notes_of(server, client, user) == notes  # nothing else for this user
    assert expected_payment(payments[fx.PAYMENT_FAILED])["decline_message"] == "Your card was declined."


# (2) Verification ----------------------------------------------------------------------------------


def _valid_event() -> fx.Event:
    return fx.account_event(fx.ACCOUNT_INCOMPLETE, account_id=fx.new_id("acct"), created=int(time.time()))


def _bad_signatures() -> Iterator[Any]:
    now = int(time.time())

    def header(text: Callable[[bytes], str]) -> Callable[[bytes], dict[str, str]]:
        return lambda body: {"Content-Type": "application/json", fx.SIGNATURE_HEADER: text(body)}

    yield pytest.param(header(lambda b: fx.signature_header(b, "whsec_wrong_secret")), id="wrong-secret")
    yield pytest.param(header(lambda b: fx.signature_header(b, SECRET, timestamp=now - 400)), id="stale-400s")
    yield pytest.param(header(lambda b: fx.signature_header(b, SECRET, timestamp=now - 3600)), id="stale-1h")
    yield pytest.param(lambda b: {"Content-Type": "application/json"}, id="missing-header")
    yield pytest.param(header(lambda b: ""), id="empty-header")
    yield pytest.param(header(lambda b: "garbage"), id="garbage-header")
    yield pytest.param(header(lambda b: f"v1={fx.signature(b, SECRET, now)}"), id="no-timestamp")
    yield pytest.param(header(lambda b: f"t={now}"), id="no-v1")
    yield pytest.param(header(lambda b: f"t=soon,v1={fx.signature(b, SECRET, now)}"), id="timestamp-not-int")
    yield pytest.param(header(lambda b: f"t={now},v0={fx.signature(b, SECRET, now)}"), id="wrong-scheme")
    yield pytest.param(header(lambda b: f"t={now + 1},v1={fx.signature(b, SECRET, now)}"), id="timestamp-swapped")
    yield pytest.param(header(lambda b: fx.signature_header(b + b" ", SECRET)), id="signed-other-bytes")


@pytest.mark.parametrize("make_headers", list(_bad_signatures()))
def test_a_bad_signature_is_400_and_nothing_is_recorded(
    client: httpx.Client, make_headers: Callable[[bytes], dict[str, str]]
) -> None:
    event = _valid_event()
    body = fx.body_of(event)
    assert_error(post_raw(client, body, make_headers(body)), 400, "bad_request")
    assert send(client, event) is False  # the event id was not recorded by the refused delivery


def test_a_tampered_body_is_400(client: httpx.Client) -> None:
    event = _valid_event()
    signed = fx.delivery(event, SECRET)
    tampered = signed.body.replace(b'"charges_enabled":false', b'"charges_enabled":true')
    assert tampered != signed.body
    assert_error(post_raw(client, tampered, signed.headers), 400, "bad_request")
    assert send(client, event) is False


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'\xff\xfe{"id": "evt_x", "object": "event"}', id="not-utf8"),
        pytest.param(b"this is not json", id="not-json"),
        pytest.param(b'{"id": "evt_trunc", "object": "event", "type": "account.up', id="truncated-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'"evt_123"', id="string"),
        pytest.param(
            b'{"id": "evt_no_type_x1", "object": "event", "created": 1700000000, "data": {"object": {}}}', id="no-type"
        ),
        pytest.param(
            b'{"object": "event", "type": "account.updated", "created": 1700000000, "data": {"object": {}}}', id="no-id"
        ),
        pytest.param(fx.body_of(fx.obj(fx.fixture(fx.ACCOUNT_ONBOARDED))), id="an-account-not-an-event"),
    ],
)
def test_a_signed_body_that_is_not_a_stripe_event_is_400(client: httpx.Client, body: bytes) -> None:
    headers = {"Content-Type": "application/json", fx.SIGNATURE_HEADER: fx.signature_header(body, SECRET)}
    assert_error(post_raw(client, body, headers), 400, "bad_request")


def test_a_refused_body_with_an_id_records_nothing(client: httpx.Client) -> None:
    event = _valid_event()
    broken = {key: value for key, value in event.items() if key != "type"}
    body = fx.body_of(broken)
    headers = {"Content-Type": "application/json", fx.SIGNATURE_HEADER: fx.signature_header(body, SECRET)}
    assert_error(post_raw(client, body, headers), 400, "bad_request")
    assert send(client, event) is False


def test_either_configured_secret_verifies(client: httpx.Client) -> None:
    assert send(client, _valid_event(), OLD_SECRET) is False
    assert send(client, _valid_event(), NEW_SECRET) is False
    event = _valid_event()  # Stripe signs with both while a secret is rolled: one v1 per secret
    body = fx.body_of(event)
    both = fx.signature_header(body, "whsec_not_ours", NEW_SECRET)
    response = post_raw(client, body, {"Content-Type": "application/json", fx.SIGNATURE_HEADER: both})
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "duplicate": False}
    # within the 300 s tolerance
    assert send(client, _valid_event(), timestamp=int(time.time()) - 240) is False


def test_a_body_over_64_kib_is_413(client: httpx.Client) -> None:
    event = _valid_event()
    big = fx.rewrite(event, metadata={"padding": "x" * (70 * 1024)})
    body = fx.body_of(big)
    headers = {"Content-Type": "application/json", fx.SIGNATURE_HEADER: fx.signature_header(body, SECRET)}
    assert_error(post_raw(client, body, headers), 413, "too_large")
    assert send(client, event) is False  # not recorded


def test_without_a_secret_the_endpoint_answers_503(server_settings: Settings, tmp_path: Path) -> None:
    settings = dataclasses.replace(server_settings, port=free_port(), stripe_webhook_secrets=(), data_dir=tmp_path)
    other = LineupServer(settings, tmp_path / "serve.log")  # same database and schema, no secret
    try:
        other.start()
        delivery = fx.delivery(_valid_event(), SECRET)
        with other.client() as http:
            assert_error(post_raw(http, delivery.body, delivery.headers), 503, "unavailable")
    finally:
        other.stop()


# (3) Accounts ---------------------------------------------------------------------------------------


def test_account_updates_out_of_order_and_one_notification_per_change(
    server: LineupServer, client: httpx.Client
) -> None:
    user, account = uid("acct-user"), fx.new_id("acct")
    base = int(time.time()) - 3600

    def make(template: str, created: int, event_id: str | None = None) -> fx.Event:
        return fx.account_event(template, account_id=account, created=created, user_id=user, event_id=event_id)

    def settled(event: fx.Event) -> None:
        eventually(lambda: assert_state(event))

    def assert_state(event: fx.Event) -> None:
        assert account_of(server, client, user) == fx.account_state(event)

    e1 = make(fx.ACCOUNT_INCOMPLETE, base)
    e2 = make(fx.ACCOUNT_ONBOARDED, base + 10)
    e3 = make(fx.ACCOUNT_OPENAPI, base + 20)
    e4 = make(fx.ACCOUNT_COMPANY, base + 30)
    e4_again = make(fx.ACCOUNT_COMPANY, base + 35)  # a newer event id with the same state: no change
    tie_low = make(fx.ACCOUNT_ONBOARDED, base + 40, event_id=f"evt_{uuid.uuid4().hex[:20]}_a")
    tie_high = make(fx.ACCOUNT_INCOMPLETE, base + 40, event_id=tie_low["id"][:-1] + "b")

    assert account_of(server, client, user) is None
    assert send(client, e2) is False
    settled(e2)
    assert send(client, e1) is False  # older: recorded, never applied
    assert send(client, e2) is True
    assert send(client, e3) is False
    settled(e3)
    assert send(client, e4) is False
    settled(e4)
    assert send(client, e4_again) is False
    assert send(client, tie_high) is False  # same `created`: the greater event id wins, whatever the order
    assert send(client, tie_low) is False
    assert send(client, e1) is True
    eventually(lambda: assert_state(tie_high))
    sentinel = fx.account_event(fx.ACCOUNT_COMPANY, account_id=fx.new_id("acct"), created=base, user_id=user + "-s")
    send(client, sentinel)  # recorded after everything above: once it shows, the rest was processed
    wait_for(account_of, server, client, user + "-s")
    assert_state(tie_high)

    notes = notes_of(server, client, user, "stripe.account.updated")
    got = [(note["data"]["charges_enabled"], note["data"].get("message")) for note in notes]
    # e2 (unknown -> active), e3 (active -> incomplete), e4 (-> active again), tie_high (-> incomplete)
    assert got == [(True, ACTIVE), (False, None), (True, ACTIVE), (False, None)], notes
    for note, event in zip(notes, (e2, e3, e4, tie_high), strict=True):
        assert {k: v for k, v in note["data"].items() if k != "message"} == account_data(fx.account_state(event))
    assert [note["created_at"] for note in notes] == sorted(note["created_at"] for note in notes)


def test_linking_an_account_by_service(server: LineupServer, client: httpx.Client) -> None:
    user, account = uid("linked"), fx.new_id("acct")
    body = {"account_id": account, "user_id": user}
    assert_error(client.post("/stripe/accounts", json=body, headers=server.headers(user)), 403, "forbidden")
    assert_error(client.post("/stripe/accounts", json=body), 401, "unauthenticated")
    linked = client.post("/stripe/accounts", json=body, headers=server.headers("backend", role="service"))
    assert linked.status_code == 200, linked.text
    assert linked.json()["account_id"] == account
    event = fx.account_event(fx.ACCOUNT_ONBOARDED, account_id=account, created=int(time.time()))  # no metadata
    assert "lineup_user_id" not in fx.obj(event)["metadata"]
    assert send(client, event) is False
    state = fx.account_state(event)
    assert wait_for(account_of, server, client, user) == state
    notes = wait_for(notes_of, server, client, user, "stripe.account.updated")
    assert [note["data"].get("message") for note in notes] == [ACTIVE]

    # reads: the user, a service; not another user; 404 for a user without an account
    assert get(server, client, f"/users/{user}/stripe-account", "backend", role="service") == state
    assert_error(client.get(f"/users/{user}/stripe-account", headers=server.headers("intruder")), 403, "forbidden")
    assert_error(client.get(f"/users/{user}/payments", headers=server.headers("intruder")), 403, "forbidden")
    nobody = uid("nobody")
    assert_error(client.get(f"/users/{nobody}/stripe-account", headers=server.headers(nobody)), 404, "not_found")


def test_an_account_seen_before_it_is_linked(server: LineupServer, client: httpx.Client) -> None:
    user, account = uid("late-link"), fx.new_id("acct")
    event = fx.account_event(fx.ACCOUNT_INCOMPLETE, account_id=account, created=int(time.time()))
    assert send(client, event) is False  # nobody to notify yet
    time.sleep(0.3)
    linked = client.post(
        "/stripe/accounts",
        json={"account_id": account, "user_id": user},
        headers=server.headers("backend", role="service"),
    )
    assert linked.status_code == 200, linked.text
    assert wait_for(account_of, server, client, user) == fx.account_state(event)


def test_an_update_after_a_link_from_another_writer_is_applied(server: LineupServer, client: httpx.Client) -> None:
    """The Stripe process answers from its own cache without reading the store; the link below is
    written by the HTTP side, so the next update starts from a stale copy, collides on save and is
    applied again from the store: it must land, linked to the user, with its notification."""
    user, account, created = uid("relinked"), fx.new_id("acct"), int(time.time())
    first = fx.account_event(fx.ACCOUNT_INCOMPLETE, account_id=account, created=created)
    assert send(client, first) is False
    time.sleep(0.3)  # processed and cached by the Stripe process (nobody to notify yet)
    linked = client.post(
        "/stripe/accounts",
        json={"account_id": account, "user_id": user},
        headers=server.headers("backend", role="service"),
    )
    assert linked.status_code == 200, linked.text
    assert wait_for(account_of, server, client, user) == fx.account_state(first)
    second = fx.account_event(fx.ACCOUNT_ONBOARDED, account_id=account, created=created + 10)
    assert send(client, second) is False
    assert wait_for(lambda: account_of(server, client, user) == fx.account_state(second) or None)
    notes = eventually(lambda: present(notes_of(server, client, user, "stripe.account.updated")))
    assert [note["data"].get("message") for note in notes] == [ACTIVE]


# (4) Payments and paid admission -----------------------------------------------------------------------


def test_payments_are_listed_newest_first_and_a_success_is_final(server: LineupServer, client: httpx.Client) -> None:
    user = uid("payer")
    base = int(time.time()) - 600
    pi1, pi2, pi3 = fx.new_id("pi"), fx.new_id("pi"), fx.new_id("pi")

    def pay(template: str, payment_id: str, created: int, amount: int) -> fx.Event:
        return fx.payment_event(template, payment_id=payment_id, created=created, user_id=user, amount=amount)

    first_try = pay(fx.PAYMENT_FAILED, pi1, base, 500)
    success = pay(fx.PAYMENT_SUCCEEDED, pi1, base + 5, 500)
    late_failure = pay(fx.PAYMENT_FAILED, pi1, base + 10, 500)  # newer by `created`, but a success is final
    declined = pay(fx.PAYMENT_FAILED, pi2, base + 20, 700)
    paid = pay(fx.PAYMENT_SUCCEEDED, pi3, base + 30, 900)

    assert payments_of(server, client, user) == []
    assert send(client, first_try) is False
    failed_row = wait_for(payments_of, server, client, user)
    assert failed_row == [expected_payment(first_try)]
    assert failed_row[0]["decline_message"] == "Your card was declined."
    for event in (success, late_failure, declined, paid):
        assert send(client, event) is False
    assert send(client, late_failure) is True
    expected = [expected_payment(paid), expected_payment(declined), expected_payment(success)]
    eventually(lambda: assert_equal(payments_of(server, client, user), expected))

    failed = notes_of(server, client, user, "payment.failed")
    assert [(n["data"]["payment_id"], n["data"]["message"]) for n in failed] == [
        (pi1, "Your card was declined."),
        (pi2, "Your card was declined."),
    ]
    succeeded = notes_of(server, client, user, "payment.succeeded")
    assert [(n["data"]["payment_id"], n["data"]["amount"], n["data"]["currency"]) for n in succeeded] == [
        (pi1, 500, "usd"),
        (pi3, 900, "usd"),
    ]
    assert get(server, client, f"/users/{user}/payments", "backend", role="service") == expected


def test_a_paid_queue_admits_a_paying_user_exactly_once(server: LineupServer, client: httpx.Client) -> None:
    owner, user, other = uid("owner"), uid("fan"), uid("fan2")
    queue = uid("paid-ev")
    open_paid_queue(server, client, queue, owner)
    assert_error(client.post(f"/events/{queue}/queue/join", headers=server.headers(user)), 409, "payment_required")

    now = int(time.time())
    payment = fx.new_id("pi")
    declined = fx.payment_event(
        fx.PAYMENT_FAILED, payment_id=payment, created=now - 30, user_id=user, queue_event_id=queue
    )
    paid = fx.payment_event(fx.PAYMENT_SUCCEEDED, payment_id=payment, created=now, user_id=user, queue_event_id=queue)
    paid_again = fx.rewrite(paid, event_id=fx.new_id("evt"))  # Stripe sent two Event objects for one PI

    assert send(client, declined) is False
    row = wait_for(payments_of, server, client, user)
    assert row == [expected_payment(declined)]
    assert get(server, client, f"/users/{user}/queue", user) == []

    assert send(client, paid) is False
    mine = wait_for(get, server, client, f"/users/{user}/queue", user)
    assert [(e["event_id"], e["user_id"], e["status"], e["position"]) for e in mine] == [(queue, user, "waiting", 1)]
    for event in (paid, paid_again, paid, paid_again):
        send(client, event)
    # a sentinel payment recorded after the redeliveries: once its admission shows, they were processed
    sentinel = fx.payment_event(
        fx.PAYMENT_SUCCEEDED, payment_id=fx.new_id("pi"), created=now, user_id=other, queue_event_id=queue
    )
    assert send(client, sentinel) is False
    eventually(lambda: assert_equal(len(get(server, client, f"/events/{queue}/queue", owner)), 2))
    entries = get(server, client, f"/events/{queue}/queue", owner)
    assert [e["user_id"] for e in entries] == [user, other]
    assert [e["entry_id"] for e in get(server, client, f"/users/{user}/queue", user)] == [mine[0]["entry_id"]]

    rows = payments_of(server, client, user)
    assert rows == [expected_payment(paid, admitted=True)]
    assert rows[0]["event_id"] == queue
    succeeded = notes_of(server, client, user, "payment.succeeded")
    assert [(n["data"]["payment_id"], n["data"]["event_id"]) for n in succeeded] == [(payment, queue)]
    assert len(notes_of(server, client, user, "payment.failed")) == 1
    assert [n["data"]["entry_id"] for n in notes_of(server, client, user, "queue.next")] == [mine[0]["entry_id"]]


# (5) 2,000 deliveries: 30 % duplicates, shuffled, 32 at a time ------------------------------------------


@dataclasses.dataclass
class Plan:
    """What was sent, and what each user should end up with."""

    events: list[fx.Event] = dataclasses.field(default_factory=list)
    account_users: dict[str, list[fx.Event]] = dataclasses.field(default_factory=dict)  # user -> that account's events
    payments: dict[str, dict[str, dict[str, Any]]] = dataclasses.field(default_factory=dict)  # user -> pi -> row
    failures_first: set[str] = dataclasses.field(default_factory=set)  # pis with a failure before their success
    admitted: dict[str, set[str]] = dataclasses.field(default_factory=lambda: defaultdict(set))  # queue -> users
    owners: dict[str, str] = dataclasses.field(default_factory=dict)  # queue -> owner


def build_plan(server: LineupServer, http: httpx.Client, distinct: int, rng: random.Random) -> Plan:
    plan = Plan()
    base = int(time.time()) - 86_400
    templates = [fx.ACCOUNT_INCOMPLETE, fx.ACCOUNT_ONBOARDED, fx.ACCOUNT_OPENAPI, fx.ACCOUNT_COMPANY]
    for n in range(50):  # 30 accounts with one event, 20 with four events at distinct `created`
        user, account = uid(f"bulk-acct{n}"), fx.new_id("acct")
        steps = 1 if n < 30 else 4
        order = rng.sample(templates, k=steps)
        events = [
            fx.account_event(order[k], account_id=account, created=base + 60 * k, user_id=user) for k in range(steps)
        ]
        plan.account_users[user] = events
        plan.events.extend(events)

    queues = [uid("bulk-q") for _ in range(20)]
    for queue in queues:
        plan.owners[queue] = uid("bulk-owner")
        open_paid_queue(server, http, queue, plan.owners[queue])
    users = [uid("bulk-payer") for _ in range(60)]
    pairs = [(user, queue) for user in users for queue in queues]
    rng.shuffle(pairs)
    amount = 1000

    def pay(template: str, user: str, queue: str, pi: str, created: int) -> fx.Event:
        return fx.payment_event(
            template, payment_id=pi, created=created, user_id=user, queue_event_id=queue, amount=amount
        )

    others = 30  # 20 payments without a user (ignored) and 10 plan.created
    remaining = distinct - len(plan.events) - others
    for user, queue in pairs:
        if remaining <= 0:
            break
        amount += 1
        pi, created = fx.new_id("pi"), base + rng.randrange(0, 3600)
        kind = rng.random()
        row: dict[str, Any]
        if kind < 0.6 or remaining == 1:  # one success
            event = pay(fx.PAYMENT_SUCCEEDED, user, queue, pi, created)
            sent, row = [event], expected_payment(event, admitted=True)
        elif kind < 0.7:  # one success as two Stripe events
            event = pay(fx.PAYMENT_SUCCEEDED, user, queue, pi, created)
            twin = fx.rewrite(event, event_id=fx.new_id("evt"))
            sent, row = [event, twin], expected_payment(event, admitted=True)
        elif kind < 0.85:  # declined only
            event = pay(fx.PAYMENT_FAILED, user, queue, pi, created)
            sent, row = [event], expected_payment(event)
        else:  # declined, then paid
            failure = pay(fx.PAYMENT_FAILED, user, queue, pi, created - 30)
            event = pay(fx.PAYMENT_SUCCEEDED, user, queue, pi, created)
            sent, row = [failure, event], expected_payment(event, admitted=True)
            plan.failures_first.add(pi)
        plan.events.extend(sent)
        remaining -= len(sent)
        plan.payments.setdefault(user, {})[pi] = row
        if row["admitted"]:
            plan.admitted[queue].add(user)
    for _ in range(20):
        plan.events.append(
            fx.payment_event(fx.PAYMENT_SUCCEEDED, payment_id=fx.new_id("pi"), created=base, queue_event_id=queues[0])
        )
    for _ in range(10):
        plan.events.append(fx.rewrite(fx.fixture(fx.OTHER_TYPE), event_id=fx.new_id("evt")))
    assert len(plan.events) == distinct
    assert len({event["id"] for event in plan.events}) == distinct
    return plan


async def deliver_all(base_url: str, deliveries: list[fx.Delivery], concurrency: int) -> list[tuple[str, int, Any]]:
    """POST every delivery, `concurrency` at a time; (event id, status, JSON answer) in completion order."""
    todo: asyncio.Queue[fx.Delivery] = asyncio.Queue()
    for item in deliveries:
        todo.put_nowait(item)
    results: list[tuple[str, int, Any]] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0, limits=limits) as http:

        async def sender() -> None:
            while not todo.empty():
                item = todo.get_nowait()
                response = await http.post(fx.WEBHOOK_PATH, content=item.body, headers=item.headers)
                try:
                    answer = response.json()
                except ValueError:
                    answer = response.text
                results.append((item.event_id, response.status_code, answer))

        await asyncio.gather(*(sender() for _ in range(concurrency)))
    return results


def test_two_thousand_shuffled_deliveries_with_duplicates(server: LineupServer, client: httpx.Client) -> None:
    rng = random.Random(20261125)
    total, distinct = 2000, 1400
    plan = build_plan(server, client, distinct, rng)
    repeats = [rng.choice(plan.events) for _ in range(total - distinct)]
    deliveries = [fx.delivery(event, rng.choice((OLD_SECRET, NEW_SECRET))) for event in plan.events + repeats]
    rng.shuffle(deliveries)

    results = asyncio.run(deliver_all(server.base_url, deliveries, concurrency=32))
    assert len(results) == total
    bad = [(event_id, status, answer) for event_id, status, answer in results if status != 200]
    assert bad == [], bad[:5]
    fresh = Counter(event_id for event_id, _, answer in results if answer == {"received": True, "duplicate": False})
    assert all(answer["received"] is True for _, _, answer in results)
    # exactly one delivery of each Stripe event id was new, however many raced
    assert len(fresh) == distinct
    assert set(fresh.values()) == {1}, [k for k, v in fresh.items() if v > 1][:5]

    # a sentinel recorded after all of them: once its effect shows, everything before it was processed
    sentinel_user = uid("bulk-sentinel")
    sentinel = fx.payment_event(
        fx.PAYMENT_SUCCEEDED, payment_id=fx.new_id("pi"), created=int(time.time()), user_id=sentinel_user
    )
    assert send(client, sentinel) is False
    wait_for(payments_of, server, client, sentinel_user, deadline=30)

    check_accounts(server, client, plan)
    check_payments(server, client, plan)
    check_admissions(server, client, plan)


def messages_follow_activation(notes: list[dict[str, Any]]) -> bool:
    previous: bool | None = None
    for note in notes:
        enabled = note["data"]["charges_enabled"]
        if note["data"].get("message") != (ACTIVE if enabled and not previous else None):
            return False
        previous = enabled
    return True


def check_accounts(server: LineupServer, http: httpx.Client, plan: Plan) -> None:
    for user, events in plan.account_users.items():
        newest = max(events, key=lambda e: (e["created"], e["id"]))
        assert account_of(server, http, user) == fx.account_state(newest)
        notes = notes_of(server, http, user, "stripe.account.updated")
        states = [account_data(fx.account_state(event)) for event in events]
        datas = [{k: v for k, v in n["data"].items() if k != "message"} for n in notes]
        if len(events) == 1:
            assert datas == states, user  # one event, however often delivered: one notification
        else:  # how many depends on the processing order; never more than one per change, the newest last
            assert 1 <= len(notes) <= len(events), (user, notes)
            assert all(data in states for data in datas), (user, datas)
            assert account_data(fx.account_state(newest)) in datas
        # The message exactly when charges went from not enabled to enabled, in processing order:
        # notifications are listed in that order, also those of one batch (they share `created_at`
        # and are ordered by their causing event's log position).
        assert messages_follow_activation(notes), (user, notes)


def check_payments(server: LineupServer, http: httpx.Client, plan: Plan) -> None:
    for user, expected in plan.payments.items():
        rows = payments_of(server, http, user)
        assert len(rows) == len(expected), user
        assert {row["payment_id"]: row for row in rows} == expected
        assert [row["updated_at"] for row in rows] == sorted((row["updated_at"] for row in rows), reverse=True)
        succeeded = Counter(n["data"]["payment_id"] for n in notes_of(server, http, user, "payment.succeeded"))
        failed = Counter(n["data"]["payment_id"] for n in notes_of(server, http, user, "payment.failed"))
        assert succeeded == Counter(pi for pi, row in expected.items() if row["status"] == "succeeded"), user
        declined_only = {pi for pi, row in expected.items() if row["status"] == "failed"}
        assert set(failed) <= declined_only | plan.failures_first, user
        assert all(failed[pi] == 1 for pi in declined_only), (user, failed)
        assert all(count == 1 for count in failed.values()), (user, failed)


def check_admissions(server: LineupServer, http: httpx.Client, plan: Plan) -> None:
    for queue, users in plan.admitted.items():
        entries = get(server, http, f"/events/{queue}/queue", plan.owners[queue])
        admitted = [entry["user_id"] for entry in entries]
        assert len(admitted) == len(set(admitted)), queue  # nobody twice
        assert set(admitted) == users, queue
    for user, payments in plan.payments.items():
        mine = [entry["event_id"] for entry in get(server, http, f"/users/{user}/queue", user)]
        assert sorted(mine) == sorted(row["event_id"] for row in payments.values() if row["admitted"]), user


# (6) Live: the toast arrives once ----------------------------------------------------------------------------


async def subscribe(ws: ClientConnection, sub: str, query: str, args: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "subscribe", "id": sub, "query": query, "args": args}))
    return await recv(ws)


def test_a_subscribed_user_sees_the_toast_once(server: LineupServer, client: httpx.Client) -> None:
    user, account, payment = uid("live"), fx.new_id("acct"), fx.new_id("pi")
    now = int(time.time())
    onboarded = fx.account_event(fx.ACCOUNT_ONBOARDED, account_id=account, created=now, user_id=user)
    paid = fx.payment_event(fx.PAYMENT_SUCCEEDED, payment_id=payment, created=now, user_id=user)

    async def scenario() -> None:
        ws = await connect(server, user)
        frames = {
            sub: await subscribe(ws, sub, query, {"user_id": user})
            for sub, query in (("n", "notifications.user"), ("a", "stripe.account"), ("p", "payments.user"))
        }
        for sub, snapshot in frames.items():
            assert (snapshot["type"], snapshot["id"], snapshot["rows"]) == ("snapshot", sub, []), snapshot

        assert send(client, onboarded) is False
        seen: dict[str, dict[str, Any]] = {}
        while set(seen) != {"n", "a"}:
            frame = await recv(ws)
            assert frame["type"] == "change", frame
            assert frame["id"] not in seen, frame  # one frame each
            seen[frame["id"]] = frame
        toast = seen["n"]
        assert toast["op"] == "upsert"
        assert toast["row"]["type"] == "stripe.account.updated"
        assert toast["row"]["data"]["message"] == ACTIVE
        assert toast["key"] == toast["row"]["notification_id"]
        assert [toast["row"]] == notes_of(server, client, user)  # the live row is the HTTP row
        assert (seen["a"]["key"], seen["a"]["row"]) == (account, account_of(server, client, user))

        assert send(client, onboarded) is True  # a duplicate: no second frame
        with pytest.raises(TimeoutError):
            await recv(ws, timeout=1.0)

        assert send(client, paid) is False
        seen = {}
        while set(seen) != {"n", "p"}:
            frame = await recv(ws)
            assert frame["id"] not in seen, frame
            seen[frame["id"]] = frame
        assert seen["n"]["row"]["type"] == "payment.succeeded"
        assert (seen["p"]["key"], seen["p"]["row"]) == (payment, payments_of(server, client, user)[0])
        assert send(client, paid) is True
        with pytest.raises(TimeoutError):
            await recv(ws, timeout=1.0)

        # someone else may not watch this user; a service may
        intruder = await connect(server, uid("intruder"))
        for query in ("notifications.user", "stripe.account", "payments.user"):
            error = await subscribe(intruder, query, query, {"user_id": user})
            assert (error["type"], error["id"], error["error"]) == ("error", query, "forbidden"), error
        service = await connect(server, "backend", role="service")
        snapshot = await subscribe(service, "a", "stripe.account", {"user_id": user})
        assert snapshot["rows"] == [account_of(server, client, user)]
        for connection in (ws, intruder, service):
            await connection.close()

    asyncio.run(scenario())


def _raw_post(sock: socket.socket, delivery: fx.Delivery, *, close: bool) -> None:
    head = [f"POST {fx.WEBHOOK_PATH} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(delivery.body)}"]
    head += [f"{name}: {value}" for name, value in delivery.headers.items()]
    head += ["Connection: close"] if close else []
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + delivery.body)


def _raw_answer(stream: Any) -> tuple[int, dict[str, str], Any]:
    status = int(stream.readline().split()[1])
    headers = {}
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, json.loads(stream.read(int(headers["content-length"])))


def test_answers_over_one_kept_alive_connection_then_one_that_closes(server: LineupServer) -> None:
    """Answers are written in one piece (entrypoints/fast_paths.py), the webhook's and Litestar's:
    a keep-alive connection gets every answer whole and in order, and with `Connection: close` the
    answer still arrives, complete, before the server closes the connection."""
    event = fx.payment_event(fx.PAYMENT_SUCCEEDED, payment_id=fx.new_id("pi"), created=int(time.time()))
    first, again = fx.delivery(event, SECRET), fx.delivery(event, OLD_SECRET)
    with socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as sock:
        stream = sock.makefile("rb")
        _raw_post(sock, first, close=False)
        assert _raw_answer(stream)[::2] == (200, {"received": True, "duplicate": False})
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # through Litestar
        status, headers, _ = _raw_answer(stream)
        assert (status, headers["content-type"]) == (200, "application/json")
        _raw_post(sock, again, close=True)
        status, headers, answer = _raw_answer(stream)
        assert (status, headers["connection"], answer) == (200, "close", {"received": True, "duplicate": True})
        assert stream.read() == b""  # then the server closed it
