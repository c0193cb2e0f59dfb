"""The stripe read model in PostgreSQL: connected accounts and payments, per user."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from adapters.postgres import changes
from projections.stripe import StripeWriter

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

TABLES = ("stripe_accounts", "payments")

DDL = """
CREATE TABLE IF NOT EXISTS stripe_accounts (
    account_id text PRIMARY KEY,
    user_id text,
    charges_enabled boolean NOT NULL DEFAULT false,
    payouts_enabled boolean NOT NULL DEFAULT false,
    details_submitted boolean NOT NULL DEFAULT false,
    requirements_due jsonb NOT NULL DEFAULT '[]',
    updated_at bigint
);
CREATE INDEX IF NOT EXISTS stripe_accounts_user ON stripe_accounts (user_id);
CREATE TABLE IF NOT EXISTS payments (
    payment_id text PRIMARY KEY,
    user_id text,
    amount bigint NOT NULL,
    currency text NOT NULL,
    status text NOT NULL,
    decline_message text,
    event_id text,
    admitted boolean NOT NULL DEFAULT false,
    updated_at bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS payments_user ON payments (user_id, updated_at DESC, payment_id);
"""

# Rows exactly as HTTP answers them (feed, snapshots and HTTP all use these).
ACCOUNT_ROW = """jsonb_build_object('account_id', a.account_id, 'charges_enabled', a.charges_enabled,
    'payouts_enabled', a.payouts_enabled, 'details_submitted', a.details_submitted,
    'requirements_due', a.requirements_due, 'updated_at', a.updated_at)"""
PAYMENT_ROW = """jsonb_build_object('payment_id', p.payment_id, 'user_id', p.user_id, 'amount', p.amount,
    'currency', p.currency, 'status', p.status, 'decline_message', p.decline_message, 'event_id', p.event_id,
    'admitted', p.admitted, 'updated_at', p.updated_at)"""

ACCOUNTS_OF_USER = f"""SELECT a.account_id AS key, {ACCOUNT_ROW} AS row FROM stripe_accounts a
    WHERE a.user_id = %(arg)s ORDER BY a.updated_at DESC NULLS LAST, a.account_id"""  # noqa: S608 - constants
PAYMENTS_OF_USER = f"""SELECT p.payment_id AS key, {PAYMENT_ROW} AS row FROM payments p
    WHERE p.user_id = %(arg)s ORDER BY p.updated_at DESC, p.payment_id DESC"""  # noqa: S608 - constants

# Accounts that left a user (re-linked), then every touched account and payment that has a user.
PUBLISH = changes.publish(
    f"""SELECT 'stripe.account'::text AS query, r.user_id AS args, r.account_id AS key, 'remove'::text AS op,
        NULL::jsonb AS row, r.ord AS ord
    FROM unnest(%(unlinked_accounts)s::text[], %(unlinked_users)s::text[])
        WITH ORDINALITY AS r(account_id, user_id, ord)
    UNION ALL
    SELECT 'stripe.account', a.user_id, a.account_id, 'upsert', {ACCOUNT_ROW},
        1000000 + row_number() OVER (ORDER BY a.account_id)
    FROM stripe_accounts a WHERE a.account_id = ANY(%(accounts)s) AND a.user_id IS NOT NULL
    UNION ALL
    SELECT 'payments.user', p.user_id, p.payment_id, 'upsert', {PAYMENT_ROW},
        2000000 + row_number() OVER (ORDER BY p.payment_id)
    FROM payments p WHERE p.payment_id = ANY(%(payments)s) AND p.user_id IS NOT NULL"""  # noqa: S608 - constants
)


class PostgresStripeWriter(StripeWriter):
    """Applies the projection's changes in the runner's transaction; `flush()` feeds the changes."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self.cursor = cursor
        self._accounts: set[str] = set()
        self._payments: set[str] = set()
        self._unlinked: list[tuple[str, str]] = []

    def account_registered(self, account_id: str) -> None:
        self.cursor.execute(
            "INSERT INTO stripe_accounts (account_id) VALUES (%s) ON CONFLICT (account_id) DO NOTHING", (account_id,)
        )
        self._accounts.add(account_id)

    def account_linked(self, account_id: str, user_id: str, previous_user_id: str | None) -> None:
        self.cursor.execute("UPDATE stripe_accounts SET user_id = %s WHERE account_id = %s", (user_id, account_id))
        if previous_user_id is not None:
            self._unlinked.append((account_id, previous_user_id))
        self._accounts.add(account_id)

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
        self.cursor.execute(
            "UPDATE stripe_accounts SET charges_enabled = %s, payouts_enabled = %s, details_submitted = %s,"
            " requirements_due = %s, updated_at = %s WHERE account_id = %s",
            (charges_enabled, payouts_enabled, details_submitted, Jsonb(requirements_due), created, account_id),
        )
        self._accounts.add(account_id)

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
    ) -> None:
        self.cursor.execute(
            "INSERT INTO payments (payment_id, user_id, amount, currency, status, decline_message, event_id,"
            " updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (payment_id) DO UPDATE SET"
            " user_id = coalesce(excluded.user_id, payments.user_id), amount = excluded.amount,"
            " currency = excluded.currency, status = excluded.status, decline_message = excluded.decline_message,"
            " event_id = coalesce(excluded.event_id, payments.event_id), updated_at = excluded.updated_at",
            (payment_id, user_id, amount, currency, status, decline_message, event_id, created),
        )
        self._payments.add(payment_id)

    def payment_admitted(self, payment_id: str) -> None:
        self.cursor.execute("UPDATE payments SET admitted = true WHERE payment_id = %s", (payment_id,))
        self._payments.add(payment_id)

    def flush(self) -> None:
        if not (self._accounts or self._payments or self._unlinked):
            return
        self.cursor.execute(
            PUBLISH,
            {
                "unlinked_accounts": [account for account, _ in self._unlinked],
                "unlinked_users": [user for _, user in self._unlinked],
                "accounts": sorted(self._accounts),
                "payments": sorted(self._payments),
            },
            prepare=changes.UNPREPARED,
        )
        self.cursor.execute(changes.NOTIFY)
        self._accounts, self._payments, self._unlinked = set(), set(), []


class StripeReader:
    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]]) -> None:
        self.pool = pool

    def account_of(self, user_id: str) -> dict[str, Any] | None:
        """The user's most recently updated connected account."""
        with self.pool.connection() as conn:
            row = conn.execute(ACCOUNTS_OF_USER + " LIMIT 1", {"arg": user_id}).fetchone()
        return row["row"] if row else None

    def payments_of(self, user_id: str) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            return [row["row"] for row in conn.execute(PAYMENTS_OF_USER, {"arg": user_id}).fetchall()]
