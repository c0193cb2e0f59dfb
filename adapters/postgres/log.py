"""Reading the event log in position order: pages after a position, and following it live.

Paging by `position > last` never skips an event because eventsourcing's Postgres recorder takes
`LOCK TABLE ... IN EXCLUSIVE MODE` in every insert: a transaction gets its positions and commits
before the next writer gets any, so positions become visible in increasing order (a rolled-back
insert leaves a hole that nothing fills later, never a late arrival). Following LISTENs on the
event table's channel before it reads what is already there, so an event committed after that
read announces itself, and nothing falls between the backlog and the live tail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import Notification
from eventsourcing.utils import TopicError
from psycopg.sql import SQL, Identifier

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from datetime import datetime

    from eventsourcing.application import Application

    from adapters.postgres.database import Database

PAGE = 1000
SCAN_WINDOW = 10_000  # log positions one topic page may span
POLL_SECONDS = 1.0  # a NOTIFY lost with a dropped connection costs at most this long


@dataclass(frozen=True)
class LoggedEvent:
    """One event of the log, decoded: its position, aggregate, version, topic, time and state."""

    position: int
    aggregate_id: str
    aggregate_type: str
    version: int
    topic: str
    timestamp: datetime | None
    state: dict[str, Any]


def topic_page(
    app: Application[Any], position: int, head: int, topics: Sequence[str], limit: int
) -> tuple[Sequence[Notification], int]:
    """Events of `topics` after `position`, at most `limit`, from a window of at most
    `SCAN_WINDOW` positions ending at or before `head` (the log head, read just before); and the
    position read up to. Only those topics cross the wire, each page is an index range scan however
    long the backlog, and since every position up to `head` is visible (see above), a short page
    means the window was read to its end."""
    page = app.recorder.select_notifications(
        start=position, limit=limit, stop=_window_end(position, head), topics=list(topics), inclusive_of_start=False
    )
    return page, _read_up_to(page, position, head, limit)


def _window_end(position: int, head: int) -> int:
    """The last position a page after `position` may span: the head, at most `SCAN_WINDOW` on."""
    return min(head, position + SCAN_WINDOW)


def _read_up_to(page: Sequence[Notification], position: int, head: int, limit: int) -> int:
    """How far a page read after `position` has read the log: to its last event when it is full
    (more may follow), else to the end of its window (never behind `position`)."""
    return page[-1].id if len(page) == limit else max(position, _window_end(position, head))


# The log head and a shared page after it, in one statement (one snapshot: every position up to the
# head it reads is visible, see above); one row with a NULL event when the page is empty. The
# parameters are cast: psycopg sends an int by its value's size, and `after + window` as two
# smallints overflowed from position 22,768 on, failing every round from there.
HEAD_AND_PAGE = """
SELECT h.head, e.notification_id, e.originator_id, e.originator_version, e.topic, e.state
FROM (SELECT max(notification_id) AS head FROM {table}) AS h
LEFT JOIN LATERAL (
    SELECT * FROM {table}
    WHERE notification_id > %(after)s::bigint
        AND notification_id <= LEAST(h.head, %(after)s::bigint + %(window)s::bigint)
        AND topic = ANY(%(topics)s)
    ORDER BY notification_id LIMIT %(limit)s::bigint
) AS e ON true
"""


@dataclass(frozen=True)
class SharedPage:
    """One read of the log serving every reader of a projector round that stands at `after`:
    the log's `head`, and the events of all their topics in (`after`, `last`], so each reader's
    own events are among them. One round trip instead of one for the head and one per reader."""

    head: int
    after: int
    last: int
    notifications: Sequence[Notification]

    @classmethod
    def read(cls, app: Application[Any], after: int, topics: set[str], limit: int) -> SharedPage:
        """The head and, when it is beyond `after`, the events of `topics` after `after`, at most
        `limit`, from a window of at most `SCAN_WINDOW` positions (as `topic_page`)."""
        recorder: Any = app.recorder
        statement = SQL(HEAD_AND_PAGE).format(table=Identifier(recorder.datastore.schema, recorder.events_table_name))
        params = {"after": after, "window": SCAN_WINDOW, "topics": sorted(topics) or ["-"], "limit": limit}
        with recorder.datastore.get_connection() as conn, conn.cursor() as cursor:
            rows = cursor.execute(statement, params, prepare=True).fetchall()
        head = rows[0]["head"] or 0
        notifications = [
            Notification(
                id=row["notification_id"],
                originator_id=row["originator_id"],
                originator_version=row["originator_version"],
                topic=row["topic"],
                state=bytes(row["state"]),
            )
            for row in rows
            if row["notification_id"] is not None
        ]
        return cls(head, after, _read_up_to(notifications, after, head, limit), notifications)

    def events_for(self, position: int, topics: set[str]) -> tuple[list[Notification], int] | None:
        """A reader's events after `position` and the position it has then read up to, or None
        when this page does not start where the reader stands (it must read for itself)."""
        if position != self.after:
            return None
        return [n for n in self.notifications if n.topic in topics], self.last


class EventLog:
    """The application's event log, read through eventsourcing's recorder and mapper."""

    def __init__(self, app: Application[Any], database: Database) -> None:
        self.app, self.database = app, database

    @property
    def channel(self) -> str:
        """The channel every insert into the event table notifies (eventsourcing's recorder)."""
        return str(self.app.recorder.channel_name)  # type: ignore[attr-defined]

    def notifications(self, after: int, limit: int | None = None) -> Iterator[Notification]:
        """Stored events after position `after`, oldest first, read a page at a time. Only
        `notification_id > n ORDER BY notification_id LIMIT k`: with a `stop` or a topic filter
        added, PostgreSQL may scan and sort the rest of the log for every page."""
        last, left = after, limit
        while left is None or left > 0:
            size = PAGE if left is None else min(PAGE, left)
            page = self.app.recorder.select_notifications(start=last, limit=size, inclusive_of_start=False)
            yield from page
            if len(page) < size:
                return
            last = page[-1].id
            left = None if left is None else left - len(page)

    def events(self, after: int, limit: int | None = None) -> Iterator[LoggedEvent]:
        """The log after `after`, up to its head as it is read (at most `limit` events)."""
        for notification in self.notifications(after, limit=limit):
            yield self.decode(notification)

    def follow(self, after: int, limit: int | None = None) -> Iterator[LoggedEvent]:
        """The log after `after`, then each new event as it is committed, until the caller stops
        (or after `limit` events). LISTEN comes first, then the backlog: no gap, nothing twice."""
        with self.database.connect() as conn:
            conn.execute(f'LISTEN "{self.channel}"')
            last, left = after, limit
            while left is None or left > 0:
                for notification in self.notifications(last, limit=left):
                    yield self.decode(notification)
                    last = notification.id
                    left = None if left is None else left - 1
                if left == 0:
                    return
                for _ in conn.notifies(timeout=POLL_SECONDS, stop_after=1):
                    pass

    def decode(self, notification: Notification) -> LoggedEvent:
        """The event with its state as the domain sees it (upcast); raw JSON state if its class is gone."""
        module, _, qualname = notification.topic.partition(":")
        aggregate_type = qualname.rpartition(".")[0] or module
        try:
            state = dict(vars(self.app.mapper.to_domain_event(notification)))
        except TopicError:  # a class that no longer exists: show what was stored
            state = self.app.mapper.transcoder.decode(notification.state)
        state.pop("originator_id", None)
        state.pop("originator_version", None)
        timestamp = state.pop("timestamp", None)
        return LoggedEvent(
            position=notification.id,
            aggregate_id=str(notification.originator_id),
            aggregate_type=aggregate_type,
            version=notification.originator_version,
            topic=notification.topic,
            timestamp=timestamp,
            state=state,
        )
