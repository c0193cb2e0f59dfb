"""The Stripe context's rules, on the in-memory event store: records once, order-independent state."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.commands import (
    Caller,
    JoinQueue,
    LinkStripeAccount,
    OpenQueue,
    Processed,
    Recorded,
    RecordStripeEvent,
    SendNotification,
    stripe_policy,
)
from domain.errors import NotOwnerError, PaymentRequiredError
from domain.queue import Queue, queue_id_for
from domain.queues import Queues
from domain.stripe import (
    ACCOUNT_UPDATED,
    PAYMENT_FAILED,
    PAYMENT_SUCCEEDED,
    NotAStripeEventError,
    Payment,
    StripeAccount,
    StripeEnvelope,
    StripeEvent,
    account_id_for,
    payment_id_for,
)

SERVICE = Caller("backend", is_service=True)


def account_event(stripe_id: str, created: int, *, charges: bool, user: str | None = "creator") -> dict[str, Any]:
    return {
        "id": stripe_id,
        "object": "event",
        "type": ACCOUNT_UPDATED,
        "created": created,
        "data": {
            "object": {
                "id": "acct_1",
                "object": "account",
                "charges_enabled": charges,
                "payouts_enabled": charges,
                "details_submitted": True,
                "requirements": {"currently_due": [] if charges else ["external_account"]},
                "metadata": {"lineup_user_id": user} if user else {},
            }
        },
    }


def payment_event(stripe_id: str, created: int, *, succeeded: bool, pi: str = "pi_1") -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": pi,
        "object": "payment_intent",
        "amount": 500,
        "currency": "eur",
        "metadata": {"lineup_user_id": "fan", "lineup_event_id": "show"},
    }
    if not succeeded:
        obj["last_payment_error"] = {"message": "Your card was declined."}
    kind = PAYMENT_SUCCEEDED if succeeded else PAYMENT_FAILED
    return {"id": stripe_id, "object": "event", "type": kind, "created": created, "data": {"object": obj}}


def deliver(app: Queues, payloads: list[dict[str, Any]], at: int = 1_000) -> list[object]:
    """Record each delivery, then process what was recorded, as the webhook and the processor do."""
    outcomes: list[object] = []
    for payload in payloads:
        text = json.dumps(payload)
        (recorded,) = app.execute([RecordStripeEvent(StripeEnvelope.read(payload), text)], at).outcomes
        assert isinstance(recorded, Recorded)
        outcomes.append(recorded)
        if not recorded.duplicate:
            received = app.repository.get(StripeEvent.create_id(payload["id"]))
            (event,) = [e for e in app.events.get(received.id) if isinstance(e, StripeEvent.Received)]
            command = stripe_policy(event)
            if command is not None:
                outcomes.extend(app.execute([command], at).outcomes)
    return outcomes


def account(app: Queues) -> StripeAccount:
    found = app.repository.get(account_id_for("acct_1"))
    assert isinstance(found, StripeAccount)
    return found


def test_a_stripe_event_is_recorded_once() -> None:
    app = Queues()
    outcomes = deliver(app, [account_event("evt_1", 10, charges=True)] * 3)
    assert [o for o in outcomes if isinstance(o, Recorded)] == [
        Recorded("evt_1", duplicate=False),
        Recorded("evt_1", duplicate=True),
        Recorded("evt_1", duplicate=True),
    ]
    assert [o for o in outcomes if isinstance(o, Processed)] == [Processed(applied=True)]


def test_duplicates_in_one_batch_are_recorded_once() -> None:
    app = Queues()
    payload = account_event("evt_1", 10, charges=True)
    command = RecordStripeEvent(StripeEnvelope.read(payload), json.dumps(payload))
    assert app.execute([command, command], 1).outcomes == [Recorded("evt_1", False), Recorded("evt_1", True)]


def test_an_older_account_event_is_recorded_but_not_applied() -> None:
    app = Queues()
    deliver(app, [account_event("evt_new", 20, charges=True), account_event("evt_old", 10, charges=False)])
    assert account(app).status == (True, True, True, ())
    assert app.repository.get(StripeEvent.create_id("evt_old")).version == 1  # recorded all the same


def test_charges_becoming_enabled_is_an_activation_and_notifies() -> None:
    app = Queues()
    deliver(app, [account_event("evt_1", 10, charges=False), account_event("evt_2", 20, charges=True)])
    updates = [e for e in app.events.get(account_id_for("acct_1")) if isinstance(e, StripeAccount.Updated)]
    assert [(u.changed, u.activated, u.user_id) for u in updates] == [(True, False, "creator"), (True, True, "creator")]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 5), st.booleans()), min_size=1, max_size=8),
    st.randoms(use_true_random=False),
)
def test_final_account_state_is_the_newest_whatever_the_delivery_order(
    updates: list[tuple[int, bool]], random: Any
) -> None:
    events = [account_event(f"evt_{i}", created, charges=charges) for i, (created, charges) in enumerate(updates)]
    deliveries = events + [random.choice(events) for _ in range(len(events) // 2)]  # and some duplicates
    random.shuffle(deliveries)
    app = Queues()
    deliver(app, deliveries)
    newest = max(events, key=lambda e: (e["created"], e["id"]))
    assert account(app).status is not None
    assert account(app).status[0] is newest["data"]["object"]["charges_enabled"]
    assert account(app).latest == (newest["created"], newest["id"])
    changes = [e for e in app.events.get(account_id_for("acct_1")) if isinstance(e, StripeAccount.Updated)]
    assert len(changes) <= len(events)  # one update per distinct event at most: never per delivery


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5), st.booleans()), min_size=1, max_size=8), st.randoms())
def test_a_payment_admits_its_user_once_whatever_arrives(outcomes: list[tuple[int, bool]], random: Any) -> None:
    app = Queues()
    app.execute([OpenQueue("show", Caller("creator"), "Paid", requires_payment=True)], 1)
    events = [payment_event(f"evt_{i}", created, succeeded=ok) for i, (created, ok) in enumerate(outcomes)]
    deliveries = events * 2
    random.shuffle(deliveries)
    deliver(app, deliveries)
    payment = app.repository.get(payment_id_for("pi_1"))
    assert isinstance(payment, Payment)
    any_success = any(ok for _, ok in outcomes)
    assert payment.status == ("succeeded" if any_success else "failed")
    admissions = [e for e in app.events.get(payment.id) if isinstance(e, Payment.Admitted)]
    assert len(admissions) == int(any_success)
    queue = app.repository.get(queue_id_for("show"))
    assert isinstance(queue, Queue)
    assert list(queue.active) == (["fan"] if any_success else [])


def test_a_paid_queue_refuses_a_plain_join() -> None:
    app = Queues()
    app.execute([OpenQueue("show", Caller("creator"), "Paid", requires_payment=True)], 1)
    (outcome,) = app.execute([JoinQueue("show", Caller("fan"), str(uuid.uuid4()))], 2).outcomes
    assert isinstance(outcome, PaymentRequiredError)


def test_a_payment_for_a_closed_queue_records_why_it_did_not_admit() -> None:
    app = Queues()
    deliver(app, [payment_event("evt_1", 10, succeeded=True)])  # no queue for "show"
    refusals = [e for e in app.events.get(payment_id_for("pi_1")) if isinstance(e, Payment.AdmissionRefused)]
    assert [(r.event_id, r.user_id, r.reason) for r in refusals] == [("show", "fan", "not_found")]


def test_only_a_service_links_accounts_and_sends_notifications() -> None:
    app = Queues()
    user = Caller("someone")
    outcomes = app.execute(
        [
            LinkStripeAccount(user, "acct_1", "someone"),
            SendNotification(user, uuid.uuid4(), "other", "promo"),
            LinkStripeAccount(SERVICE, "acct_1", "creator"),
        ],
        1,
    ).outcomes
    assert [type(o) for o in outcomes[:2]] == [NotOwnerError, NotOwnerError]
    assert account(app).user_id == "creator"


@pytest.mark.parametrize(
    "payload",
    [[], {"object": "event"}, {"id": "evt_1", "type": "x", "created": "soon", "data": {"object": {}}}, {"id": 1}],
)
def test_what_is_not_a_stripe_event_is_refused(payload: object) -> None:
    with pytest.raises(NotAStripeEventError):
        StripeEnvelope.read(payload)
