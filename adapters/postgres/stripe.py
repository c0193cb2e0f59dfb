"""The stripe read model in PostgreSQL: connected accounts and payments, per user."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

# A batch's account changes folded per account and applied in one upsert: registered, linked (the
# user, or NULL when the batch did not link it) and its status (NULL `updated_at` when the batch did
# not update it). Registration comes before any other event of an account, so a new row takes the
# defaults for what the batch did not set. Lookups by primary key only: it can be prepared.
ACCOUNTS = """INSERT INTO stripe_accounts AS a (account_id, user_id, charges_enabled, payouts_enabled,
        details_submitted, requirements_due, updated_at)
    SELECT u.account_id, u.user_id, coalesce(u.charges, false), coalesce(u.payouts, false),
        coalesce(u.details, false), coalesce(u.due, '[]'), u.updated_at
    FROM unnest(%(accounts)b::text[], %(users)b::text[], %(charges)b::boolean[], %(payouts)b::boolean[],
        %(details)b::boolean[], %(due)b::jsonb[], %(updated)b::bigint[])
        AS u(account_id, user_id, charges, payouts, details, due, updated_at)
    ON CONFLICT (account_id) DO UPDATE SET
        user_id = coalesce(excluded.user_id, a.user_id),
        charges_enabled = CASE WHEN excluded.updated_at IS NULL THEN a.charges_enabled
            ELSE excluded.charges_enabled END,
        payouts_enabled = CASE WHEN excluded.updated_at IS NULL THEN a.payouts_enabled
            ELSE excluded.payouts_enabled END,
        details_submitted = CASE WHEN excluded.updated_at IS NULL THEN a.details_submitted
            ELSE excluded.details_submitted END,
        requirements_due = CASE WHEN excluded.updated_at IS NULL THEN a.requirements_due
            ELSE excluded.requirements_due END,
        updated_at = coalesce(excluded.updated_at, a.updated_at)"""

# A batch's payments folded per payment (the last outcome; user and event id kept once known; admitted
# once admitted) upserted, and the batch's changes put on the feed, in one statement: accounts that
# left a user (re-linked), payments that left one (a later event named another user; the RETURNING
# subquery reads the row as it was before this statement), then every touched account and payment
# that has a user. Payments only admitted in this batch were updated before it (ADMITTED).
PUBLISH = changes.publish(
    f"""SELECT 'stripe.account'::text AS query, r.user_id AS args, r.account_id AS key, 'remove'::text AS op,
        NULL::jsonb AS row, r.ord AS ord
    FROM unnest(%(unlinked_accounts)b::text[], %(unlinked_users)b::text[])
        WITH ORDINALITY AS r(account_id, user_id, ord)
    UNION ALL
    SELECT 'payments.user', up.previous, up.payment_id, 'remove', NULL,
        1000000 + row_number() OVER (ORDER BY up.payment_id)
    FROM up WHERE up.previous IS NOT NULL AND up.previous IS DISTINCT FROM up.user_id
    UNION ALL
    SELECT 'stripe.account', a.user_id, a.account_id, 'upsert', {ACCOUNT_ROW},
        2000000 + row_number() OVER (ORDER BY a.account_id)
    FROM stripe_accounts a WHERE a.account_id = ANY(%(accounts)b) AND a.user_id IS NOT NULL
    UNION ALL
    SELECT 'payments.user', p.user_id, p.payment_id, 'upsert', {PAYMENT_ROW},
        3000000 + row_number() OVER (ORDER BY p.payment_id)
    FROM (SELECT payment_id, user_id, amount, currency, status, decline_message, event_id, admitted, updated_at
          FROM up
          UNION ALL
          SELECT payment_id, user_id, amount, currency, status, decline_message, event_id, admitted, updated_at
          FROM payments WHERE payment_id = ANY(%(admitted_only)b)) AS p
    WHERE p.user_id IS NOT NULL""",  # noqa: S608 - constants
    ctes="""up AS (
        INSERT INTO payments AS p (payment_id, user_id, amount, currency, status, decline_message, event_id,
            admitted, updated_at)
        SELECT * FROM unnest(%(payments)b::text[], %(users)b::text[], %(amounts)b::bigint[],
            %(currencies)b::text[], %(statuses)b::text[], %(declines)b::text[], %(events)b::text[],
            %(admitted)b::boolean[], %(updated)b::bigint[])
        ON CONFLICT (payment_id) DO UPDATE SET
            user_id = coalesce(excluded.user_id, p.user_id), amount = excluded.amount, currency = excluded.currency,
            status = excluded.status, decline_message = excluded.decline_message,
            event_id = coalesce(excluded.event_id, p.event_id), admitted = p.admitted OR excluded.admitted,
            updated_at = excluded.updated_at
        RETURNING p.*, (SELECT o.user_id FROM payments o WHERE o.payment_id = p.payment_id) AS previous),""",
)

# Payments admitted in a batch that did not record them (recorded in an earlier one).
ADMITTED = "UPDATE payments SET admitted = true WHERE payment_id = ANY(%(payments)b)"

_ACCOUNT = "accounts users charges payouts details due updated"
_PAYMENT = "payments users amounts currencies statuses declines events admitted updated"


class PostgresStripeWriter(StripeWriter):
    """Holds the batch's changes folded per account and per payment; `flush()` applies them and
    feeds the changes, in the runner's transaction: a few statements a batch, where there was one
    per event (psycopg's pipeline sends, a syscall each, were a quarter of the projector process's
    GIL time at 1,000 webhooks/s)."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self.cursor = cursor
        self._accounts: dict[str, list[Any]] = {}  # as the columns of _ACCOUNT
        self._payments: dict[str, list[Any]] = {}  # as the columns of _PAYMENT
        self._admitted: set[str] = set()  # payments not recorded in this batch
        self._unlinked: list[tuple[str, str]] = []

    def _account(self, account_id: str) -> list[Any]:
        if account_id not in self._accounts:
            self._accounts[account_id] = [account_id, None, None, None, None, None, None]
        return self._accounts[account_id]

    def account_registered(self, account_id: str) -> None:
        self._account(account_id)

    def account_linked(self, account_id: str, user_id: str, previous_user_id: str | None) -> None:
        self._account(account_id)[1] = user_id
        if previous_user_id is not None:
            self._unlinked.append((account_id, previous_user_id))

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
        status = [charges_enabled, payouts_enabled, details_submitted, changes.json_text(requirements_due), created]
        self._account(account_id)[2:] = status

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
        before = self._payments.get(payment_id)
        if before is not None:
            user_id = before[1] if user_id is None else user_id
            event_id = before[6] if event_id is None else event_id
        admitted = before is not None and before[7]
        self._payments[payment_id] = [
            payment_id,
            user_id,
            amount,
            currency,
            status,
            decline_message,
            event_id,
            admitted,
            created,
        ]

    def payment_admitted(self, payment_id: str) -> None:
        if payment_id in self._payments:
            self._payments[payment_id][7] = True
        else:
            self._admitted.add(payment_id)

    def flush(self) -> None:
        if not (self._accounts or self._payments or self._admitted or self._unlinked):
            return
        if self._accounts:
            self.cursor.execute(ACCOUNTS, changes.columns(_ACCOUNT, list(self._accounts.values())))
        if self._admitted:
            self.cursor.execute(ADMITTED, {"payments": sorted(self._admitted)}, prepare=changes.UNPREPARED)
        self.cursor.execute(
            PUBLISH,
            {
                "unlinked_accounts": [account for account, _ in self._unlinked],
                "unlinked_users": [user for _, user in self._unlinked],
                "accounts": sorted(self._accounts),
                "admitted_only": sorted(self._admitted),
                **changes.columns(_PAYMENT, [self._payments[key] for key in sorted(self._payments)]),
            },
            prepare=changes.UNPREPARED,
        )
        self.cursor.execute(changes.NOTIFY)
        self._accounts, self._payments, self._admitted, self._unlinked = {}, {}, set(), []


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
