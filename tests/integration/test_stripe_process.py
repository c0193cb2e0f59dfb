"""The Stripe process and read models on a real PostgreSQL: exactly once, even with two processors."""

from __future__ import annotations

import json
import random
import threading
from typing import Any

from adapters.postgres.cleanup import Cleanup
from adapters.processor import EventProcessor
from domain.commands import Caller, OpenQueue, RecordStripeEvent
from domain.queue import Queue, queue_id_for
from domain.stripe import PAYMENT_FAILED, PAYMENT_SUCCEEDED, Payment, StripeEnvelope, payment_id_for
from entrypoints.bootstrap import STRIPE_PROCESS, Container, stripe_processor
from entrypoints.settings import Settings

USERS = [f"fan{i}" for i in range(40)]


def payment(stripe_id: str, user: str, *, succeeded: bool, created: int) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": f"pi_{user}",
        "object": "payment_intent",
        "amount": 1200,
        "currency": "usd",
        "metadata": {"lineup_user_id": user, "lineup_event_id": "show"},
    }
    if not succeeded:
        obj["last_payment_error"] = {"message": "Your card was declined."}
    kind = PAYMENT_SUCCEEDED if succeeded else PAYMENT_FAILED
    return {"id": stripe_id, "object": "event", "type": kind, "created": created, "data": {"object": obj}}


def record(container: Container, payloads: list[dict[str, Any]]) -> None:
    commands = [RecordStripeEvent(StripeEnvelope.read(p), json.dumps(p)) for p in payloads]
    container.queues.execute(commands, 1_000)


def drain(processor: EventProcessor, head: int) -> None:
    while processor.position < head:
        processor()


def test_two_processors_apply_each_event_exactly_once(settings: Settings, container: Container) -> None:
    container.queues.execute([OpenQueue("show", Caller("creator"), "Paid", requires_payment=True)], 500)
    deliveries = []
    for n, user in enumerate(USERS):
        deliveries += [
            payment(f"evt_fail_{user}", user, succeeded=False, created=100 + n),
            payment(f"evt_ok_{user}", user, succeeded=True, created=200 + n),
            payment(f"evt_ok2_{user}", user, succeeded=True, created=200 + n),  # Stripe's second Event object
        ]
    random.Random(3).shuffle(deliveries)
    for start in range(0, len(deliveries), 7):  # several batches, so the processors interleave
        record(container, deliveries[start : start + 7])
    head = container.queues.recorder.max_notification_id() or 0

    first, second = (stripe_processor(settings, container.database, container) for _ in range(2))
    first.batch_size = second.batch_size = 5
    threads = [threading.Thread(target=drain, args=(p, head)) for p in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    queue = container.queues.repository.get(queue_id_for("show"))
    assert isinstance(queue, Queue)
    assert sorted(queue.active) == sorted(USERS)
    for user in USERS:
        events = list(container.queues.events.get(payment_id_for(f"pi_{user}")))
        assert len([e for e in events if isinstance(e, Payment.Admitted)]) == 1, user
        assert len([e for e in events if isinstance(e, Payment.Succeeded)]) == 1, user
    assert first.processed + second.processed == len(deliveries)  # each recorded event once, by one of them
    assert container.queues.recorder.max_tracking_id(STRIPE_PROCESS) >= head  # type: ignore[attr-defined]

    for runner in container.runners:
        runner.catch_up()
    for user in USERS[:5]:
        rows = container.stripe.payments_of(user)
        assert [(r["status"], r["admitted"], r["amount"]) for r in rows] == [("succeeded", True, 1200)]
        kinds = sorted(n["type"] for n in container.notifications.for_user(user))
        assert kinds.count("payment.succeeded") == 1
        assert kinds.count("payment.failed") <= 1  # only if the failure was processed before the success


def test_expired_notifications_are_deleted_and_subscribers_told(settings: Settings, container: Container) -> None:
    record(container, [payment("evt_1", "fan", succeeded=True, created=1)])
    processor = stripe_processor(settings, container.database, container)
    drain(processor, container.queues.recorder.max_notification_id() or 0)
    for runner in container.runners:
        runner.catch_up()
    (notification,) = container.notifications.for_user("fan")
    expires_at = notification["expires_at"]
    assert container.notifications.for_user("fan", now=expires_at) == []  # never served once expired

    removed = Cleanup(container.pool).run(now_ms=expires_at)
    assert removed.notifications == 1
    with container.pool.connection() as conn:
        assert conn.execute("SELECT count(*) AS n FROM notifications").fetchone() == {"n": 0}
        last = conn.execute("SELECT query, args, key, op FROM change_feed ORDER BY cursor DESC LIMIT 1").fetchone()
    assert last == {
        "query": "notifications.user",
        "args": "fan",
        "key": notification["notification_id"],
        "op": "remove",
    }


def test_a_duplicate_recorded_by_another_process_is_answered_as_one(settings: Settings, container: Container) -> None:
    """A second process (its own event store instance) has never seen the event: its first attempt
    takes it as new, the append collides, and the batch runs again reading the store."""
    from domain.commands import Recorded
    from entrypoints.bootstrap import event_store

    delivery = payment("evt_elsewhere", "fan1", succeeded=True, created=300)
    record(container, [delivery])
    other = event_store(settings, container.database)
    try:
        again = RecordStripeEvent(StripeEnvelope.read(delivery), json.dumps(delivery))
        executed = other.execute([again, again], 2_000)  # twice in one batch, too
        assert executed.outcomes == [Recorded("evt_elsewhere", duplicate=True)] * 2
        assert executed.position is None  # nothing appended
        assert other.execute([again], 3_000).outcomes == [Recorded("evt_elsewhere", duplicate=True)]
    finally:
        other.close()
    with container.database.connect() as conn:
        rows = conn.execute(
            f"SELECT count(*) AS n FROM {container.queues.recorder.events_table_name}"  # type: ignore[attr-defined]
            " WHERE topic LIKE %s",
            ("%StripeEvent.Received%",),
        ).fetchone()
    assert rows == {"n": 1}
