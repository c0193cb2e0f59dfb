"""Notifications of one batch share `created_at`: they are listed in the order their causing events
were logged, not by their ids (uuids, in no useful order), over HTTP and on the change feed."""

from __future__ import annotations

import json
import uuid
from typing import Any

from adapters.postgres import notifications
from adapters.postgres.database import Database
from domain.commands import Caller, RecordStripeEvent, SendNotification
from domain.notifications import Notification
from domain.stripe import ACCOUNT_UPDATED, ACTIVE_MESSAGE, StripeEnvelope
from entrypoints.bootstrap import Container, build, stripe_processor
from entrypoints.settings import Settings

USER = "fan"


def project(container: Container) -> None:
    for runner in container.runners:
        runner.catch_up()


def published(container: Container, user: str) -> list[str]:
    """The notification ids put on the change feed for `user`, in cursor order."""
    with container.pool.connection() as conn:
        rows = conn.execute(
            "SELECT key FROM change_feed WHERE query = 'notifications.user' AND args = %s AND op = 'upsert'"
            " ORDER BY cursor",
            (user,),
        ).fetchall()
    return [row["key"] for row in rows]


def test_notifications_sent_in_one_batch_are_listed_in_log_order(container: Container) -> None:
    ids = sorted((uuid.uuid4() for _ in range(6)), reverse=True)  # by id they would come last first
    service = Caller("backend", is_service=True)
    sent = [SendNotification(service, note_id, USER, "promo", {"n": n}) for n, note_id in enumerate(ids)]
    container.queues.execute(sent, 1_800_000_000_000)  # one batch: one `created_at`
    project(container)

    expected = [str(notification_id) for notification_id in ids]
    rows = container.notifications.for_user(USER)
    assert [row["notification_id"] for row in rows] == expected
    assert [row["data"] for row in rows] == [{"n": n} for n in range(len(ids))]
    assert {row["created_at"] for row in rows} == {1_800_000_000_000}
    assert published(container, USER) == expected

    # the stored position is the log position of the event that caused the notification
    logged = {
        str(event.originator_id): notification.id
        for notification in container.queues.recorder.select_notifications(start=1, limit=100)
        if isinstance(event := container.queues.mapper.to_domain_event(notification), Notification.Sent)
    }
    with container.pool.connection() as conn:
        stored = {row["notification_id"]: row["position"] for row in conn.execute("SELECT * FROM notifications")}
    assert stored == logged


def account_updated(stripe_id: str, created: int, *, enabled: bool) -> dict[str, Any]:
    account = {
        "id": "acct_order",
        "object": "account",
        "charges_enabled": enabled,
        "payouts_enabled": enabled,
        "details_submitted": enabled,
        "metadata": {"lineup_user_id": USER},
    }
    data = {"object": account}
    return {"id": stripe_id, "object": "event", "type": ACCOUNT_UPDATED, "created": created, "data": data}


def test_account_updates_applied_in_one_batch_are_listed_in_processing_order(
    settings: Settings, container: Container
) -> None:
    payloads = [account_updated(f"evt_order_{n}", 1_700_000_000 + n, enabled=n % 2 == 0) for n in range(6)]
    container.queues.execute([RecordStripeEvent(StripeEnvelope.read(p), json.dumps(p)) for p in payloads], 1_000)
    processor = stripe_processor(settings, container.database, container)
    assert processor() == len(payloads)  # all applied in one batch, at one time
    project(container)

    rows = container.notifications.for_user(USER)
    assert len({row["created_at"] for row in rows}) == 1
    got = [(row["data"]["charges_enabled"], row["data"].get("message")) for row in rows]
    assert got == [(True, ACTIVE_MESSAGE), (False, None)] * 3  # activated, deactivated, ... as applied
    ids = [row["notification_id"] for row in rows]
    assert ids != sorted(ids)  # uuid5 ids: ordered by id, these would be listed in another order
    assert published(container, USER) == ids


OLD_TABLE = """
CREATE TABLE notifications (
    notification_id text PRIMARY KEY,
    user_id text NOT NULL,
    type text NOT NULL,
    data jsonb NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX notifications_user ON notifications (user_id, created_at, notification_id);
INSERT INTO notifications VALUES ('old', 'fan', 'promo', '{}', 1, 9000000000000000);
"""


def test_a_table_from_before_position_is_migrated_at_start(settings: Settings, schema: str) -> None:
    database = Database(str(settings.database_url), schema)
    database.create_schema()
    with database.connect() as conn:
        conn.execute(OLD_TABLE)
    build(settings, projectors=False).close()  # the DDL runs at every start
    with database.connect() as reader, reader.transaction():
        reader.execute("SELECT count(*) FROM notifications")  # a read in progress (ACCESS SHARE)
        with database.connect() as conn:
            conn.execute("SET lock_timeout = '2s'")
            conn.execute(notifications.DDL)  # the next start: nothing to change, so no lock to wait for
    with database.connect() as conn:
        rows = conn.execute("SELECT notification_id, position FROM notifications").fetchall()
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = 'notifications'"
            " ORDER BY indexname",
            (schema,),
        ).fetchall()
    assert rows == [{"notification_id": "old", "position": 0}]
    assert [row["indexname"] for row in indexes] == [
        "notifications_expiry",
        "notifications_pkey",
        "notifications_user_order",
    ]
    assert '(user_id, created_at, "position", notification_id)' in indexes[2]["indexdef"]
