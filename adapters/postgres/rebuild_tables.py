"""What `rebuild` and `verify` need to know of each read model: its tables, and its state during a run.

They build the tables again from the log and compare or switch them row by row, so each table
names its key, the rows the comparison covers, and how a changed row is told to `/ws` subscribers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from adapters.postgres import notifications, queues, stripe

if TYPE_CHECKING:
    from collections.abc import Callable

    import psycopg

    from adapters.postgres.projector import BatchWriter
    from projections.base import Projection


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


class Twin(Protocol):
    """An in-memory writer (rebuild_memory.py): `copy` writes its rows into the scratch tables."""

    def flush(self) -> None: ...
    def copy(self, cursor: psycopg.Cursor[Any]) -> int: ...


class ReadModel(Protocol):
    """A projection with the writer it runs with and the DDL of that writer's tables."""

    @property
    def name(self) -> str: ...
    @property
    def projection(self) -> Projection[Any]: ...
    @property
    def writer(self) -> Callable[[psycopg.Cursor[Any]], BatchWriter]: ...
    @property
    def ddl(self) -> str: ...


@dataclass
class Model:
    """One read model during a run: its scratch schema, position, columns, twin and handlers."""

    model: ReadModel
    scratch: str
    topics: set[str]
    position: int = 0
    columns: dict[str, list[str]] = field(default_factory=dict)
    twin: Twin | None = None  # the bulk goes here, then into the scratch tables by COPY
    handlers: dict[type, Callable[[Projection[Any], Any, Any], None]] = field(default_factory=dict)

    def handler(self, kind: type) -> Callable[[Projection[Any], Any, Any], None]:
        """The projection's `process` for events of `kind`, found once: a singledispatchmethod builds
        a new bound wrapper on every access, which cost more than decoding the event."""
        found = self.handlers.get(kind)
        if found is None:
            process = type(self.model.projection).__dict__.get("process")
            dispatcher = getattr(process, "dispatcher", None)
            found = dispatcher.dispatch(kind) if dispatcher is not None else type(self.model.projection).process
            self.handlers[kind] = found
        return found

    @property
    def tables(self) -> tuple[Table, ...]:
        return TABLES[self.model.name]

    @property
    def live_rows(self) -> bool:
        return self.model.name in LIVE_ROWS
