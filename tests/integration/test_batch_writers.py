"""The Stripe and notifications writers hold a batch and apply it in a few statements at `flush()`.

Whatever the calls, a batch must leave the tables, and each feed key's latest change, exactly as
the same calls flushed one at a time (the writers' per-event statements before they batched).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.postgres.notifications import PostgresNotificationsWriter
from adapters.postgres.stripe import PostgresStripeWriter

if TYPE_CHECKING:
    import psycopg

    from entrypoints.bootstrap import Container

ACCOUNTS, PAYMENTS, USERS = ["acct_a", "acct_b"], ["pi_a", "pi_b"], ["u1", "u2"]

account_call = st.one_of(
    st.tuples(st.just("link"), st.sampled_from(ACCOUNTS), st.sampled_from(USERS)),
    st.tuples(
        st.just("update"),
        st.sampled_from(ACCOUNTS),
        st.booleans(),
        st.booleans(),
        st.booleans(),
        st.lists(st.sampled_from(["external_account", "tos_acceptance.date"]), max_size=2),
        st.integers(1, 100),
    ),
)
payment_call = st.one_of(
    st.tuples(
        st.just("record"),
        st.sampled_from(PAYMENTS),
        st.none() | st.sampled_from(USERS),  # a later event may name another user
        st.integers(0, 10_000),
        st.sampled_from(["usd", "eur"]),
        st.sampled_from(["succeeded", "failed"]),
        st.none() | st.just("Your card was declined."),
        st.none() | st.sampled_from(["event-1", "event-2"]),
        st.integers(1, 100),
    ),
    st.tuples(st.just("admit"), st.sampled_from(PAYMENTS)),
)
notification_call = st.tuples(
    st.just("notify"), st.sampled_from(["n1", "n2", "n3"]), st.sampled_from(USERS), st.integers(1, 100)
)


Call = tuple[str, tuple[Any, ...], dict[str, Any]]  # a writer method's name, args and keyword args


def writer_calls(calls: list[tuple[Any, ...]]) -> list[list[Call]]:
    """Each generated call as the writer calls one event makes, as the projections make them: an
    account is registered before anything else happens to it, a link names the user it replaces,
    and a payment is admitted only once recorded."""
    linked: dict[str, str | None] = {}  # registered accounts -> their user
    recorded: set[str] = set()
    events: list[list[Call]] = []
    for kind, key, *rest in calls:
        made: list[Call] = []
        if kind in {"link", "update"} and key not in linked:
            made.append(("account_registered", (key,), {}))
            linked[key] = None
        if kind == "link":
            made.append(("account_linked", (key, rest[0], linked[key]), {}))
            linked[key] = rest[0]
        elif kind == "update":
            names = ("charges_enabled", "payouts_enabled", "details_submitted", "requirements_due", "created")
            made.append(("account_updated", (key,), dict(zip(names, rest, strict=True))))
        elif kind == "record":
            names = ("user_id", "amount", "currency", "status", "decline_message", "event_id", "created")
            made.append(("payment_recorded", (key,), dict(zip(names, rest, strict=True))))
            recorded.add(key)
        elif kind == "admit" and key in recorded:
            made.append(("payment_admitted", (key,), {}))
        elif kind == "notify":
            made.append(("notification_created", (key, rest[0], "promo", {"n": rest[1]}, rest[1]), {}))
        events.append(made)
    return events


def outcome(conn: psycopg.Connection[Any], calls: list[tuple[Any, ...]], *, each: bool) -> dict[str, Any]:
    """The tables and each feed key's latest change after `calls`, in one batch or flushed after
    every event; rolled back afterwards."""
    with conn.transaction(force_rollback=True), conn.cursor() as cursor:
        stripe, notes = PostgresStripeWriter(cursor), PostgresNotificationsWriter(cursor, ttl_ms=1_000)
        for position, event in enumerate(writer_calls(calls), start=1):
            notes.position = position
            for name, args, kwargs in event:
                getattr(notes if name == "notification_created" else stripe, name)(*args, **kwargs)
            if each:
                stripe.flush()
                notes.flush()
        stripe.flush()
        notes.flush()
        accounts = cursor.execute("SELECT * FROM stripe_accounts ORDER BY account_id").fetchall()
        payments = cursor.execute("SELECT * FROM payments ORDER BY payment_id").fetchall()
        notifications = cursor.execute("SELECT * FROM notifications ORDER BY notification_id").fetchall()
        latest = cursor.execute(  # what a subscriber of each query sees: a remove leaves what was never there
            "SELECT * FROM (SELECT DISTINCT ON (query, args, key) query, args, key, op, row FROM change_feed"
            " ORDER BY query, args, key, cursor DESC) AS latest WHERE op = 'upsert'"
        ).fetchall()
    return {"accounts": accounts, "payments": payments, "notifications": notifications, "latest": latest}


def test_a_batch_leaves_what_its_events_flushed_one_by_one_leave(container: Container) -> None:
    with container.database.connect() as conn:

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(st.lists(account_call | payment_call | notification_call, min_size=1, max_size=14))
        def check(calls: list[tuple[Any, ...]]) -> None:
            batched = outcome(conn, calls, each=False)
            assert batched == outcome(conn, calls, each=True)
            touched = {call[1] for call in calls if call[0] != "admit"}
            stored = {row["account_id"] for row in batched["accounts"]} | {
                row["payment_id"] for row in batched["payments"]
            }
            assert touched - {"n1", "n2", "n3"} <= stored  # the comparison is not between two empty outcomes

        check()
