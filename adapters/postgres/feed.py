"""Following the change feed (one LISTEN per process) and reading snapshots at a known cursor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg
from psycopg.rows import dict_row, tuple_row

from adapters.fanout import Change, Hub
from adapters.postgres import changes, notifications, stripe
from adapters.postgres.queues import SUMMARY_ROW

if TYPE_CHECKING:
    from collections.abc import Iterator

    from psycopg_pool import ConnectionPool

    from adapters.postgres.database import Database

log = logging.getLogger(__name__)
PAGE = 1000
# The follower's page: tuples, and each row as its JSON text, decoded only when a subscriber of this
# process follows its query and arguments (most changes, e.g. the entry rows of queues nobody here
# watches, are then never decoded). The same rows and order as changes.PAGE.
FOLLOW_PAGE = (
    "SELECT cursor, query, args, key, op, row::text FROM change_feed WHERE cursor > %s ORDER BY cursor LIMIT %s"
)
_decode_row = msgspec.json.decode


ANYONE, SELF, OWNER = "anyone", "self", "owner"


@dataclass(frozen=True)
class LiveQuery:
    """A query clients can follow: its argument (the change feed's `args`), who may follow it, and
    how to read its rows (key, row as HTTP answers it). The snapshot statement takes %(arg)s, and
    may use %(since)s (an option, 0 when absent) and %(now)s (epoch ms)."""

    argument: str
    snapshot: str
    access: str  # ANYONE; SELF: the user named by the argument; OWNER: the queue's owner (services: all)
    options: tuple[str, ...] = ()
    derived: bool = False  # rows published after the projection (live_rows): a snapshot waits for that too


LIVE_QUERIES = {
    "queue.summary": LiveQuery(
        "event_id",
        f"SELECT s.event_id AS key, {SUMMARY_ROW} AS row FROM queue_summary s WHERE s.event_id = %(arg)s",  # noqa: S608
        ANYONE,
    ),
    "queue.event": LiveQuery(
        "event_id",
        "SELECT key, row FROM live_rows WHERE query = 'queue.event' AND args = %(arg)s ORDER BY ord",
        OWNER,
        derived=True,
    ),
    "queue.user": LiveQuery(
        "user_id",
        "SELECT key, row FROM live_rows WHERE query = 'queue.user' AND args = %(arg)s ORDER BY ord, key",
        SELF,
        derived=True,
    ),
    "notifications.user": LiveQuery("user_id", notifications.FOR_USER, SELF, options=("since",)),
    "stripe.account": LiveQuery("user_id", stripe.ACCOUNTS_OF_USER, SELF),
    "payments.user": LiveQuery("user_id", stripe.PAYMENTS_OF_USER, SELF),
}


def to_change(row: dict[str, Any]) -> Change:
    return Change(row["cursor"], row["query"], row["args"], row["key"], row["op"], row["row"])


class FeedReader:
    """Snapshots and catch-up reads, each at a cursor read in the same database snapshot."""

    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]]) -> None:
        self.pool = pool

    @contextlib.contextmanager
    def _consistent(self) -> Iterator[psycopg.Connection[Any]]:
        """One read-only REPEATABLE READ transaction: the head and the rows read in it agree."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield conn

    def snapshot(self, query: str, args: str, since: int = 0) -> tuple[int, dict[str, Any]]:
        """(cursor, rows by key): the rows exactly as of that cursor."""
        params = {"arg": args, "since": since, "now": notifications.epoch_ms()}
        with self._consistent() as conn:
            head = conn.execute(changes.HEAD).fetchone()
            rows = conn.execute(LIVE_QUERIES[query].snapshot, params).fetchall()
        return int(head["cursor"]) if head else 0, {row["key"]: row["row"] for row in rows}

    def owner(self, event_id: str) -> str | None:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT owner_id FROM queue_summary WHERE event_id = %s", (event_id,)).fetchone()
        return row["owner_id"] if row else None

    def changes_after(self, query: str, args: str, after: int) -> tuple[int, int | None, list[Change]]:
        """(head, oldest kept cursor, this query's changes after `after` up to head)."""
        with self._consistent() as conn:
            head_row = conn.execute(changes.HEAD).fetchone()
            oldest_row = conn.execute(changes.OLDEST).fetchone()
            rows = conn.execute(
                changes.COLUMNS + " WHERE query = %s AND args = %s AND cursor > %s ORDER BY cursor",
                (query, args, after),
            ).fetchall()
        head = int(head_row["cursor"]) if head_row else 0
        return head, oldest_row["oldest"] if oldest_row else None, [to_change(row) for row in rows]


class FeedFollower:
    """Reads every new change once per process, in cursor order, and hands it to the hub.

    A LISTEN connection wakes it on `lineup_changes`; it also polls once a second, so a lost
    notification delays a change by at most that.
    """

    def __init__(self, database: Database, hub: Hub) -> None:
        self.database, self.hub = database, hub
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        async with await self._connect() as conn:
            row = await (await conn.execute(changes.HEAD)).fetchone()
        self.hub.advance(int(row["cursor"]) if row else 0)
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._follow())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(**self.database.params(), autocommit=True, row_factory=dict_row)

    async def _listen(self) -> None:
        while True:
            try:
                async with await self._connect() as conn:
                    await conn.execute(f"LISTEN {changes.CHANNEL}")
                    self._wake.set()
                    async for _ in conn.notifies():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("change-feed LISTEN lost; reconnecting in 1 s", exc_info=True)
                await asyncio.sleep(1.0)

    async def _follow(self) -> None:
        while True:
            try:
                async with await self._connect() as conn:
                    while True:
                        self._wake.clear()
                        page = conn.cursor(row_factory=tuple_row)
                        await page.execute(FOLLOW_PAGE, (self.hub.dispatched, PAGE))
                        rows = await page.fetchall()
                        hub = self.hub
                        for at, query, args, key, op, text in rows:
                            if hub.follows(query, args):
                                row = None if text is None else _decode_row(text)
                                hub.dispatch(Change(at, query, args, key, op, row))
                            else:
                                hub.advance(at)
                        if len(rows) < PAGE:
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(self._wake.wait(), 1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("change-feed follower lost its connection; reconnecting in 1 s", exc_info=True)
                await asyncio.sleep(1.0)
