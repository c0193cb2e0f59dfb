"""Following the change feed (one LISTEN per process) and reading snapshots at a known cursor."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg
from psycopg.rows import tuple_row

from adapters.fanout import Change, Hub
from adapters.postgres import changes, notifications, stripe
from adapters.postgres.database import session_name
from adapters.postgres.queues import SUMMARY_ROW

if TYPE_CHECKING:
    from collections.abc import Iterator

    from psycopg_pool import ConnectionPool

    from adapters.postgres.database import Database

log = logging.getLogger(__name__)
PAGE = 1000
PAGES_HANDED = 4  # pages read but not yet dispatched by the event loop
WAIT = 0.25  # s: how often the follower thread looks at its stop flag
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


def feed_application() -> str:
    """The follower session's application_name in pg_stat_activity: `lineup-feed <pid>`."""
    return session_name("lineup-feed")


class FeedFollower:
    """Reads every new change once per process, in cursor order, and hands it to the hub.

    The reading runs on a thread of its own with a blocking connection that LISTENs on
    `lineup_changes` (and reads at least once a second, so a lost notification delays a change by
    at most that); each page goes to the event loop in one `call_soon_threadsafe`, where the hub
    dispatches it. On the loop, the wake-up, the page's query and its reply each waited for a turn
    of the loop, which under load is busy with HTTP requests: three waits instead of one.
    At most `PAGES_HANDED` pages wait for the loop; then the thread waits too.
    """

    def __init__(self, database: Database, hub: Hub) -> None:
        self.database, self.hub = database, hub
        self._stop = threading.Event()
        self._room = threading.Semaphore(PAGES_HANDED)
        self._thread: threading.Thread | None = None
        self._handed = 0  # the last cursor handed to the event loop

    async def start(self) -> None:
        async with await psycopg.AsyncConnection.connect(**self.database.params(), autocommit=True) as conn:
            row = await (await conn.execute(changes.HEAD)).fetchone()
        head = int(row[0]) if row else 0
        self.hub.advance(head)
        self._handed = head
        self._stop.clear()
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, args=(loop,), name="lineup-feed", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2 * WAIT)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        while not self._stop.is_set():
            try:
                with self.database.connect(application_name=feed_application()) as conn:
                    conn.execute(f"LISTEN {changes.CHANNEL}")
                    self._follow(conn, loop)
            except Exception:
                log.warning("change-feed follower lost its connection; reconnecting in 1 s", exc_info=True)
                self._stop.wait(1.0)

    def _follow(self, conn: psycopg.Connection[Any], loop: asyncio.AbstractEventLoop) -> None:
        """Pages after `self._handed` (the last cursor handed to the loop, kept across reconnects:
        nothing is handed twice) until stopped."""
        page = conn.cursor(row_factory=tuple_row)
        last_read = 0.0
        while not self._stop.is_set():
            rows = page.execute(FOLLOW_PAGE, (self._handed, PAGE)).fetchall()
            last_read = time.monotonic()
            if rows:
                while not self._room.acquire(timeout=WAIT):
                    if self._stop.is_set() or loop.is_closed():
                        return
                loop.call_soon_threadsafe(self._dispatch, rows)
                self._handed = rows[-1][0]
            if len(rows) == PAGE:
                continue
            # until a notification (those that came during the read are kept by psycopg) or a second
            while not self._stop.is_set() and time.monotonic() - last_read < 1.0:
                if any(True for _ in conn.notifies(timeout=WAIT, stop_after=1)):
                    break

    def _dispatch(self, rows: list[tuple[Any, ...]]) -> None:
        """On the event loop: one page, in cursor order."""
        self._room.release()
        hub = self.hub
        for at, query, args, key, op, text in rows:
            if not hub.follows(query, args):
                hub.advance(at)
                continue
            try:
                row = None if text is None else _decode_row(text)
                hub.dispatch(Change(at, query, args, key, op, row))
            except Exception:  # a bug; the rest of the page still goes out
                log.exception("dispatching change %s failed", at)
                hub.advance(at)
