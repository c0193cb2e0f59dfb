"""What `rebuild` and `verify` need to know of each read model's tables, by projection name.

They build the tables again from the log and compare or switch them row by row, so each table
names its key, the rows the comparison covers, and how a changed row is told to `/ws` subscribers.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapters.postgres import notifications, queues, stripe


@dataclass(frozen=True)
class Feed:
    """How a row of the table is a row of a live query: `row` is a jsonb expression over `alias`."""

    query: str
    args: str  # the column holding the query's argument
    key: str  # the column holding the row's key in that query
    row: str
    alias: str


@dataclass(frozen=True)
class Table:
    name: str
    key: str  # its primary key (one column)
    feed: Feed | None = None  # None: published some other way (queue entries: live_rows)
    current: str = "true"  # the rows compared; may use %(now)s (epoch ms)


TABLES: dict[str, tuple[Table, ...]] = {
    "queues": (
        Table("queue_summary", "queue_id", Feed("queue.summary", "event_id", "event_id", queues.SUMMARY_ROW, "s")),
        Table("queue_entries", "entry_id"),
    ),
    "notifications": (
        Table(
            "notifications",
            "notification_id",
            Feed("notifications.user", "user_id", "notification_id", notifications.ROW, "n"),
            current="expires_at > %(now)s",  # the clean-up deletes expired rows; a rebuild has them all
        ),
    ),
    "stripe": (
        Table(
            "stripe_accounts", "account_id", Feed("stripe.account", "user_id", "account_id", stripe.ACCOUNT_ROW, "a")
        ),
        Table("payments", "payment_id", Feed("payments.user", "user_id", "payment_id", stripe.PAYMENT_ROW, "p")),
    ),
}
LIVE_ROWS = frozenset({"queues"})  # their entry rows (queue.event, queue.user) are derived: see live_rows.py
