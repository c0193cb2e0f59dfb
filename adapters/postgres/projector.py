"""Runs projections over the event log: batches of events, read-model rows and tracking in one transaction."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from eventsourcing.utils import get_topic
from psycopg import errors
from psycopg.sql import SQL, Identifier

from adapters.postgres import live_rows
from adapters.postgres.eventstore import TRACKING_REFUSED, TRACKING_UPSERT
from adapters.postgres.log import SharedPage, topic_page

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import psycopg
    from eventsourcing.application import Application
    from eventsourcing.persistence import Notification
    from eventsourcing.postgres import PostgresTrackingRecorder
    from psycopg_pool import ConnectionPool

    from adapters.postgres.database import Database
    from adapters.progress import Progress
    from projections.base import Projection

log = logging.getLogger(__name__)
PROGRESS_CHANNEL = "lineup_progress"
ELECTION_INTERVAL = 1.0
IDLE_WAIT = 0.2  # seconds an idle round waits for a wake-up: a deferred entry-row publication is at most this late
PROJECTED = "projected"  # progress name: every projection has processed the log up to here
PUBLISHED = "published"  # progress name: the derived rows (queue entry rows) are on the change feed too

RECORD_POSITIONS = SQL("""
WITH moved AS (
    INSERT INTO {tracking} AS t (application_name, notification_id)
    SELECT * FROM unnest(%(names)s::text[], %(positions)s::bigint[])
    ON CONFLICT (application_name) DO UPDATE SET notification_id = excluded.notification_id
    WHERE t.notification_id < excluded.notification_id)
SELECT CASE WHEN %(payload)s::text IS NOT NULL THEN pg_notify(%(channel)s, %(payload)s) END,
    CASE WHEN %(relaxed)s THEN set_config('synchronous_commit', 'off', true) END
""")


# A projection batch's tracking upsert (the event store's, see TRACKING_UPSERT): in the batch's
# pipelined transaction a refusal fails the transaction at its one sync, where eventsourcing's upsert
# needed a round trip of its own to fetch its result.
TRACK_FUNCTION = SQL(
    """
CREATE OR REPLACE FUNCTION {function}(tracking_name text, tracking_id bigint) RETURNS void LANGUAGE plpgsql AS $body$
BEGIN"""
    + TRACKING_UPSERT
    + """
END
$body$
"""
)


def track_function(tracking: PostgresTrackingRecorder) -> Identifier:
    return Identifier(tracking.datastore.schema, f"lineup_track_{tracking.tracking_table_name}"[:63])


def create_track_function(conn: psycopg.Connection[Any], tracking: PostgresTrackingRecorder) -> None:
    """Create (or replace) the function a projection batch records its position with."""
    table = Identifier(tracking.datastore.schema, tracking.tracking_table_name)
    conn.execute(TRACK_FUNCTION.format(function=track_function(tracking), tracking_table=table))


def record_positions(
    executor: psycopg.Connection[Any] | psycopg.Cursor[Any],
    tracking: Identifier,
    positions: dict[str, int],
    payload: str | None,
    *,
    relaxed: bool = False,
) -> None:
    """Tracking rows moved to `positions` (never backwards: whoever recorded more wins) and, when
    given, `payload` on the progress channel, in one statement (the projector's checkpoint, and
    `lineup rebuild` moving the live tracking to what it rebuilt). `relaxed`: the statement's own
    transaction (autocommit) commits without waiting for the WAL flush (see `checkpoint`)."""
    executor.execute(
        RECORD_POSITIONS.format(tracking=tracking),
        {
            "names": list(positions),
            "positions": list(positions.values()),
            "channel": PROGRESS_CHANNEL,
            "payload": payload,
            "relaxed": relaxed,
        },
        prepare=True,
    )


def checkpoint(
    conn: psycopg.Connection[Any],
    tracking: PostgresTrackingRecorder,
    runners: Sequence[ProjectionRunner[Any]],
    payload: str | None,
) -> None:
    """Record the in-memory positions of `runners` (none: only the notification) and send `payload`
    on the progress channel, on an autocommit connection.

    It commits without waiting for the WAL flush (synchronous_commit off for its transaction): what
    it records, positions moved past windows holding none of a runner's events, costs nothing to
    lose in a crash (those windows are read again and hold nothing), and the notification only
    tells waiters that read models already durable are there. Waiting for the flush cost every
    round a second fsync after the batch's own; and since the transaction notifies, it held
    PostgreSQL's database-wide notify lock all that time, which every other notifying commit (event
    appends, batches, publications) waits for."""
    table = Identifier(tracking.datastore.schema, tracking.tracking_table_name)
    positions = {runner.projection.name: runner.position for runner in runners}
    record_positions(conn, table, positions, payload, relaxed=True)
    for runner in runners:
        runner.dirty = False


def projector_application() -> str:
    """The LISTEN session's application_name: it holds the projector lock, and `lineup status` shows
    this (host and pid of the process) as the lock's holder. PostgreSQL keeps 63 bytes."""
    return f"lineup projector {socket.gethostname()}:{os.getpid()}"[:63]


class Publisher(Protocol):
    """Puts derived rows on the change feed on the publisher thread (`ProjectorThread._publish`)."""

    def __call__(self) -> int:
        """Publish what is due; returns how many changes (0: no work done)."""

    def held_back(self) -> int | None:
        """The lowest log position whose derived rows the last call left for later, if any."""


class Reader(Protocol):
    """What a round's shared page is read for: runners and processors alike."""

    position: int
    topics: set[str]
    batch_size: int


class Processor(Reader, Protocol):
    """A process answering events with commands (`adapters/processor.EventProcessor`)."""

    processed: int  # commands executed so far

    def __call__(self, head: int | None = None, page: SharedPage | None = None) -> int:
        """One batch; how many events it read (0: nothing new)."""


class BatchWriter(Protocol):
    def flush(self) -> None: ...


W = TypeVar("W", bound=BatchWriter)


class ProjectionRunner(Generic[W]):
    """Exactly once: a batch's changes and its tracking position commit together, or neither does.

    The tracking upsert refuses a position that is not beyond the stored one, so a batch
    processed twice (by a restarted or a second process) rolls back and changes nothing.
    """

    def __init__(  # noqa: PLR0913
        self,
        app: Application[Any],
        pool: ConnectionPool[psycopg.Connection[Any]],
        projection: Projection[W],
        writer: Callable[[psycopg.Cursor[Any]], W],
        tracking: PostgresTrackingRecorder,
        progress: Progress,
        *,
        batch_size: int = 1000,
    ) -> None:
        self.app, self.pool, self.projection = app, pool, projection
        self.writer, self.tracking, self.progress = writer, tracking, progress
        self.batch_size = batch_size
        self.topics = {get_topic(cls) for cls in projection.event_types()}  # only these are fetched
        self.topic_list = sorted(self.topics) or ["-"]  # an empty filter would mean every topic
        self.track = SQL("SELECT {function}(%s, %s)").format(function=track_function(tracking))
        self.position = self.tracked()
        self.dirty = False  # the position in memory is ahead of the tracking row (nothing to project between)
        progress.register(projection.name, self.position)

    @property
    def name(self) -> str:
        return self.projection.name

    def run_once(self, head: int | None = None, page: SharedPage | None = None) -> int:
        """Process the next batch of events; returns how many log positions it moved on (0: none new).

        Only the projection's own topics are fetched (`adapters.postgres.log.topic_page`).
        `head`, when given, is the log head the caller has just read (one read per round serves
        every runner), and `page` the round's read of the log, used when it starts where this
        runner stands. A window without any of them costs no transaction: the position moves on in
        memory (`dirty`) and the caller records it with the other runners' in one statement
        (`ProjectorThread._checkpoint`; `catch_up` records it itself). Reading such a window again
        after a crash finds nothing to do, so exactly once still holds.
        """
        if head is None:
            head = self.app.recorder.max_notification_id() or 0
        if head <= self.position:
            return 0
        shared = page.events_for(self.position, self.topics) if page is not None else None
        notifications, last = shared or topic_page(self.app, self.position, head, self.topic_list, self.batch_size)
        if notifications:
            if not self._commit(notifications, last):
                return 0
        else:
            self.dirty = True
        moved, self.position = last - self.position, last
        self.progress.advance(self.projection.name, last)
        return moved

    def _commit(self, notifications: Sequence[Notification], last: int) -> bool:
        """The batch's read-model changes and the tracking position `last`, in one transaction;
        False when another process had recorded that position first (this one then goes on from theirs).

        BEGIN, the statements, the tracking upsert and COMMIT travel in one pipeline with one sync:
        one round trip. psycopg's `transaction()` syncs at BEGIN and at COMMIT, and eventsourcing's
        tracking upsert fetches its result: four round trips before the batch's changes were
        committed (and announced to the sockets' followers)."""
        try:
            with self.pool.connection() as conn:
                try:
                    with conn.pipeline(), conn.cursor() as cursor:
                        cursor.execute("BEGIN")
                        writer = self.writer(cursor)
                        for notification in notifications:
                            event = self.app.mapper.to_domain_event(notification)
                            self.projection.process_at(notification.id, event, writer)
                        writer.flush()
                        cursor.execute(self.track, (self.projection.name, last))
                        cursor.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(errors.Error):
                        conn.rollback()  # a failed block stays open until rolled back
                    raise
        except errors.UniqueViolation as error:
            if not (error.diag.message_primary or "").startswith(TRACKING_REFUSED):
                raise
            self.reload()
            return False
        self.dirty = False
        return True

    def tracked(self) -> int:
        """The position committed in the database (whoever committed it)."""
        return self.tracking.max_tracking_id(self.projection.name) or 0

    def reload(self) -> None:
        self.position, self.dirty = self.tracked(), False
        self.progress.advance(self.projection.name, self.position)

    def catch_up(self) -> int:
        total = 0
        while count := self.run_once():
            total += count
        if self.dirty:
            with self.pool.connection() as conn:
                checkpoint(conn, self.tracking, [self], f"{self.projection.name}:{self.position}")
        return total


class ProjectorThread:
    """Keeps projections up to date, in exactly one process per database (`lineup serve`'s
    projector process; with `elect=False`, as in serve's HTTP processes, it only follows).

    A session-level advisory lock on the LISTEN connection elects the process that projects;
    the others retry every second and take over when the holder's session ends (a crash or a
    stop releases it). Every process follows the `lineup_progress` channel, so its commands
    can wait for their own events to be projected whoever projects them.
    """

    def __init__(  # noqa: PLR0913
        self,
        database: Database,
        channel: str,
        runners: list[ProjectionRunner[Any]],
        progress: Progress,
        published: Progress,
        processors: Sequence[Processor] = (),
        publishers: Sequence[Publisher] = (),
        *,
        elect: bool = True,
    ) -> None:
        self.database, self.channel, self.runners, self.progress = database, channel, runners, progress
        self.elect = elect  # False: this process only follows the progress (another one projects)
        self.published = published  # what the publishers have put on the feed (PUBLISHED): snapshots of derived rows
        self.processors = list(processors)  # first in each round: what they write is projected in the same round
        self.publishers = list(publishers)  # on their own thread: derived rows onto the change feed
        self._projected_at = self._published_at = min((runner.position for runner in runners), default=0)
        published.register(PUBLISHED, self._published_at)
        self.leader = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._projected = threading.Event()  # a round moved the projections: the publishers have work
        self._threads = [
            threading.Thread(target=self._listen, name="lineup-listen", daemon=True),
        ]
        if elect:
            self._threads += [
                threading.Thread(target=self._project, name="lineup-projector", daemon=True),
                threading.Thread(target=self._publish, name="lineup-publisher", daemon=True),
            ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._projected.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _project(self) -> None:
        """Rounds of processors and projection batches. Publishing derived rows (queue entry rows,
        the clean-up) runs on its own thread (`_publish`): a round, and with it the summary frame of
        a command, never waits behind a publication of a long queue's rows."""
        while not self._stop.is_set():
            self._wake.clear()
            if not self.leader.is_set():
                self._wake.wait(0.5)
                continue
            try:
                page = self._shared_page([*self.runners, *self.processors])
                head = page.head if page else None
                executed = sum(process.processed for process in self.processors)
                busy = sum(process(head, page) for process in self.processors)
                if sum(process.processed for process in self.processors) != executed:
                    # the processors wrote events: the runners read past them, to project an event
                    # and what it caused in the same round
                    page = self._shared_page(self.runners)
                    head = page.head if page else None
                busy += sum(runner.run_once(head, page) for runner in self.runners)
                self._checkpoint()
            except Exception:
                log.exception("projection batch failed; retrying in 1 s")
                self._stop.wait(1.0)
                continue
            if busy:
                self._projected.set()
            else:
                self._wake.wait(IDLE_WAIT)

    def _shared_page(self, readers: Sequence[Reader]) -> SharedPage | None:
        """The log head and one read of the log for the `readers` standing where most of them
        stand (all of them, once caught up), in one statement: a round then costs one read instead
        of one for the head and one per reader, and a command's summary change is committed that
        much sooner. A reader elsewhere (a new projection catching up) reads its own pages and
        holds nobody back."""
        if not self.runners or not readers:
            return None
        standing = Counter(reader.position for reader in readers)
        after = max(standing, key=lambda position: (standing[position], position))
        at = [reader for reader in readers if reader.position == after]
        topics = set().union(*(reader.topics for reader in at))
        return SharedPage.read(self.runners[0].app, after, topics, min(reader.batch_size for reader in at))

    def _checkpoint(self) -> None:
        """One statement per round: the tracking rows of runners that moved on in memory, and one
        notification telling every process how far all projections are: waiters (read-your-writes)
        in any process wait for that, the lowest of all positions."""
        dirty = [runner for runner in self.runners if runner.dirty]
        position = min((runner.position for runner in self.runners), default=0)
        moved = position > self._projected_at
        if not dirty and not moved:
            return
        with self.runners[0].pool.connection() as conn:
            checkpoint(conn, self.runners[0].tracking, dirty, f"{PROJECTED}:{position}" if moved else None)
        self._projected_at = position

    def _publish(self) -> None:
        """Publishers run after the rounds that moved the projections; then one notification tells
        every process up to which log position the derived rows are on the feed: the projections'
        position before the pass, or just before the oldest event a publisher held back."""
        while not self._stop.is_set():
            self._projected.clear()
            if not self.leader.is_set():
                self._projected.wait(0.5)
                continue
            position = min((runner.position for runner in self.runners), default=0)  # all committed
            try:
                busy = sum(publish() for publish in self.publishers)
                held = [at for publish in self.publishers if (at := publish.held_back()) is not None]
                position = min([position, *(at - 1 for at in held)])
                if position > self._published_at:
                    with self.runners[0].pool.connection() as conn:
                        checkpoint(conn, self.runners[0].tracking, [], f"{PUBLISHED}:{position}")
                    self._published_at = position
                    self.published.advance(PUBLISHED, position)
            except Exception:
                log.exception("publishing derived rows failed; retrying in 1 s")
                self._stop.wait(1.0)
                continue
            if not busy:
                self._projected.wait(IDLE_WAIT)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with self.database.connect(application_name=projector_application()) as conn:
                    if self.elect:  # a process that only follows has no rounds to wake for new events
                        conn.execute(f'LISTEN "{self.channel}"')
                    conn.execute(f"LISTEN {PROGRESS_CHANNEL}")
                    self._follow(conn)
            except Exception:
                log.warning("LISTEN connection lost; reconnecting in 1 s", exc_info=True)
            finally:
                self.leader.clear()  # the lock lived in that session
            self._stop.wait(1.0)

    def _catch_up_progress(self, conn: psycopg.Connection[Any]) -> None:
        """What happened while this process was not listening: the tracked positions, and the
        entry rows published up to just before the oldest mark still waiting."""
        tracked = [runner.tracked() for runner in self.runners]
        for runner, position in zip(self.runners, tracked, strict=True):
            self.progress.advance(runner.projection.name, position)
        oldest = conn.execute(live_rows.OLDEST_MARK).fetchone()
        published = min(tracked, default=0)
        if oldest and oldest["position"] is not None:
            published = min(published, oldest["position"] - 1)
        self.published.advance(PUBLISHED, published)

    def _on_progress(self, payload: str) -> None:
        name, _, at = payload.partition(":")
        if name == PROJECTED:  # the lowest of every projection's position: it moves them all
            for runner in self.runners:
                self.progress.advance(runner.projection.name, int(at))
        elif name == PUBLISHED:
            self.published.advance(PUBLISHED, int(at))
        else:
            self.progress.advance(name, int(at))

    def _follow(self, conn: psycopg.Connection[Any]) -> None:
        self._catch_up_progress(conn)
        next_election = 0.0
        while not self._stop.is_set():
            if self.elect and not self.leader.is_set() and time.monotonic() >= next_election:
                next_election = time.monotonic() + ELECTION_INTERVAL
                key = self.database.lock_key("projector")  # held by the one process that projects
                row = conn.execute("SELECT pg_try_advisory_lock(%s) AS won", (key,)).fetchone()
                if row and row["won"]:
                    for runner in self.runners:
                        runner.reload()
                    log.info("this process now runs the projectors")
                    self.leader.set()
                    self._wake.set()
            for notify in conn.notifies(timeout=0.5):
                if notify.channel == PROGRESS_CHANNEL:
                    self._on_progress(notify.payload)
                else:
                    self._wake.set()
