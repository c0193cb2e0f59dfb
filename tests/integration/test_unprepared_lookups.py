"""Statements that look read-model rows up by a set of keys are never prepared on the server.

Prepared, PostgreSQL would soon keep one generic plan for them, made while the table was small (a
sequential scan), and every later projection round would read the whole table (measured: 4.3 ms a
statement with ~5,000 notifications, growing with the table). See `changes.UNPREPARED`.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from adapters.postgres.notifications import PostgresNotificationsWriter
from adapters.postgres.queues import PostgresQueuesWriter
from adapters.postgres.stripe import PostgresStripeWriter

if TYPE_CHECKING:
    from entrypoints.bootstrap import Container

ROUNDS = 12  # psycopg prepares a statement on its 5th run; PostgreSQL may go generic 5 runs later


def test_key_set_lookups_of_many_rounds_leave_no_prepared_statement(container: Container) -> None:
    with container.database.connect() as conn:
        for round_ in range(ROUNDS):
            with conn.transaction(), conn.cursor() as cursor:
                notes = PostgresNotificationsWriter(cursor, ttl_ms=60_000)
                notes.position = round_
                stripe = PostgresStripeWriter(cursor)
                queues = PostgresQueuesWriter(cursor)
                queues.position = round_
                queues.entry_joined(
                    uuid.uuid5(uuid.NAMESPACE_URL, f"queue-{round_ - 1}"), f"e{round_}", "fan", 2, 1_000
                )
                queue_id = uuid.uuid5(uuid.NAMESPACE_URL, f"queue-{round_}")
                queues.queue_opened(
                    queue_id, f"event-{round_}", "owner", "Q", None, 60_000, requires_payment=False, at=1_000
                )
                for n in range(3):
                    notes.notification_created(f"n{round_}-{n}", "fan", "promo", {"n": n}, 1_000 + round_)
                    stripe.account_registered(f"acct_{round_}_{n}")
                    stripe.account_linked(f"acct_{round_}_{n}", "fan", None)
                    stripe.payment_recorded(
                        f"pi_{round_}_{n}",
                        user_id="fan",
                        amount=500,
                        currency="usd",
                        status="succeeded",
                        decline_message=None,
                        event_id=None,
                        created=1_000 + round_,
                    )
                notes.flush()
                stripe.flush()
                queues.flush()
        prepared = [row["statement"] for row in conn.execute("SELECT statement FROM pg_prepared_statements")]
        published = conn.execute("SELECT query, count(*) AS n FROM change_feed GROUP BY query ORDER BY query")
        counts = {row["query"]: row["n"] for row in published}

    # the rounds did run through psycopg's preparing: the batches' inserts from arrays are prepared ...
    for table in ("notifications", "stripe_accounts"):
        assert any(f"INSERT INTO {table}" in statement for statement in prepared), table
    # ... the lookups by key set are not, and they did publish every row
    assert [statement for statement in prepared if "ANY(" in statement] == []
    assert counts == {
        "notifications.user": 3 * ROUNDS,
        "payments.user": 3 * ROUNDS,
        "queue.summary": 2 * ROUNDS - 1,  # the round's queue, and the one before it (an entry joined)
        "stripe.account": 3 * ROUNDS,
    }
