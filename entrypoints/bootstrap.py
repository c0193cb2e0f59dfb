"""The composition root: picks the database, builds the event store, projections and writers."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from eventsourcing.postgres import PostgresAggregateRecorder, PostgresTrackingRecorder
from psycopg_pool import ConnectionPool

from adapters.committer import GroupCommitter
from adapters.embedded import EmbeddedPostgres
from adapters.fanout import Hub
from adapters.gateway import SharedSnapshots
from adapters.postgres import changes, live_rows
from adapters.postgres.cleanup import Cleanup
from adapters.postgres.database import Database, name_sessions
from adapters.postgres.feed import FeedReader
from adapters.postgres.locks import QueueLocks
from adapters.postgres.notifications import NotificationsReader
from adapters.postgres.projector import ProjectionRunner, ProjectorThread, create_track_function
from adapters.postgres.queues import QueuesReader
from adapters.postgres.stripe import StripeReader
from adapters.processor import EventProcessor
from adapters.progress import Progress
from domain.commands import stripe_policy
from domain.queues import Queues
from domain.stripe import StripeEvent
from entrypoints.read_models import read_models
from entrypoints.settings import Settings

log = logging.getLogger("lineup")
TRACKING_TABLE = "projection_tracking"
STRIPE_PROCESS = "stripe-process"  # the tracked process that applies recorded Stripe events
READ_YOUR_WRITES_TIMEOUT = 2.0


def jwt_secret(settings: Settings) -> str:
    """The configured secret, or one created once in the data dir (with a warning)."""
    if settings.jwt_secret:
        return settings.jwt_secret
    path: Path = settings.data_dir / "jwt_secret"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    log.warning("LINEUP_JWT_SECRET is not set: using the generated secret in %s", path)
    return path.read_text().strip()


def open_database(settings: Settings) -> tuple[Database, EmbeddedPostgres | None]:
    """LINEUP_DATABASE_URL when set; otherwise the embedded server under LINEUP_DATA_DIR."""
    if settings.database_url:
        return Database(settings.database_url, settings.database_schema), None
    embedded = EmbeddedPostgres(settings.data_dir)
    return Database(embedded.start(), settings.database_schema), embedded


def event_store(
    settings: Settings, database: Database, *, create_tables: bool = False, pool_size: int | None = None
) -> Queues:
    """The event store; only `migrate` creates tables (under a lock: concurrent DDL collides)."""
    env = database.event_store_env(pool_size=pool_size or settings.pool_size, lock_timeout=settings.lock_timeout)
    env["CREATE_TABLE"] = "y" if create_tables else "n"
    queues = Queues(env=env)
    name_sessions(queues.factory.datastore.pool, "lineup-events")  # type: ignore[attr-defined]
    return queues


def migrate(settings: Settings, database: Database) -> Queues:
    """Create every table that is missing (idempotent; safe from several processes at once)."""
    database.create_schema()
    with database.connect() as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (database.lock_key("migrate"),))
        try:
            queues = event_store(settings, database, create_tables=True)
            conn.execute(changes.DDL)
            conn.execute(live_rows.DDL)
            for model in read_models(settings).values():
                conn.execute(model.ddl)
            tracking = tracking_recorder(queues)
            tracking.create_table()
            create_track_function(conn, tracking)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (database.lock_key("migrate"),))
    return queues


def tracking_recorder(queues: Queues) -> PostgresTrackingRecorder:
    datastore = queues.factory.datastore  # type: ignore[attr-defined]
    return PostgresTrackingRecorder(datastore, tracking_table_name=TRACKING_TABLE)


def queue_locks(database: Database, queues: Queues) -> QueueLocks:
    """Per-queue locks for the writers of `queues`, which also read its stored versions."""
    recorder = queues.recorder
    if not isinstance(recorder, PostgresAggregateRecorder):
        msg = f"queue locks need eventsourcing's PostgreSQL recorder, not {type(recorder).__name__}"
        raise TypeError(msg)
    return QueueLocks(database, recorder.events_table_name)


def committer(queues: Queues, locks: QueueLocks) -> GroupCommitter:
    """Group commit with per-queue advisory locks, so several processes take turns on a queue."""
    return GroupCommitter(lambda commands, at: queues.execute(commands, at, locks.hold))


@dataclass
class Container:
    """Everything a running Lineup process uses; `close()` releases it in reverse order."""

    settings: Settings
    database: Database
    embedded: EmbeddedPostgres | None
    queues: Queues
    pool: ConnectionPool[psycopg.Connection[Any]]
    reader: QueuesReader
    notifications: NotificationsReader
    stripe: StripeReader
    committer: GroupCommitter
    progress: Progress
    published: Progress  # the derived (queue entry) rows' publication, which WebSocket snapshots of them read
    runners: list[ProjectionRunner[Any]]
    locks: QueueLocks
    hub: Hub
    feed_reader: FeedReader
    snapshots: SharedSnapshots
    jwt_secret: str
    projector: ProjectorThread | None = None
    processors: list[EventProcessor] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)  # what the projector side opened
    _closed: bool = field(default=False, repr=False)

    def caught_up(self, *, derived: bool = False) -> None:
        """Read-your-writes for every client and process: before a read, wait (briefly) until the
        projections have processed the log up to its head as it is now, so a read reflects every
        command acknowledged before it began; with `derived`, until the queue entry rows published
        from them (`live_rows`, what snapshots of queue.event and queue.user read) have too.
        Commands never wait for projections."""
        head = self.queues.recorder.max_notification_id()
        if not head:
            return
        deadline = time.monotonic() + READ_YOUR_WRITES_TIMEOUT
        with contextlib.suppress(TimeoutError):
            self.progress.reached(head).result(timeout=READ_YOUR_WRITES_TIMEOUT)
            if derived and self.projector is not None:
                self.published.reached(head).result(timeout=max(0.0, deadline - time.monotonic()))

    def start(self) -> None:
        self.committer.start()
        if self.projector is not None:
            self.projector.start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self.committer.stop()
        if self.projector is not None:
            self.projector.stop()
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                close()
        self.locks.close()
        self.pool.close()
        self.queues.close()
        if self.embedded is not None:
            self.embedded.stop()


def stripe_processor(settings: Settings, database: Database, container: Container) -> EventProcessor:
    """Applies recorded Stripe events (accounts, payments, paid admissions) in the projecting
    process, with its own application instance and queue locks (it runs on the projector thread)."""
    app = event_store(settings, database, pool_size=2)
    locks = queue_locks(database, app)
    container.closers += [app.close, locks.close]
    return EventProcessor(STRIPE_PROCESS, app, StripeEvent.Received, stripe_policy, locks.hold)


def build(settings: Settings, *, projectors: bool = True, elect: bool = True) -> Container:
    """Wire a process: database (embedded by default), tables, write path, read side.

    `projectors`: follow the projections' progress (read-your-writes); with `elect`, also stand
    for the election of the one process that projects (`lineup serve` leaves that to its projector
    process: `entrypoints.projector_process`)."""
    database, embedded = open_database(settings)
    try:
        queues = migrate(settings, database)
        pool = database.pool(min_size=2, max_size=settings.pool_size, name="lineup-read")
        progress, published = Progress(), Progress()
        locks = queue_locks(database, queues)
        tracking = tracking_recorder(queues)
        runners: list[ProjectionRunner[Any]] = [
            ProjectionRunner(queues, pool, model.projection, model.writer, tracking, progress)
            for model in read_models(settings).values()
        ]
        container = Container(
            settings=settings,
            database=database,
            embedded=embedded,
            queues=queues,
            pool=pool,
            reader=QueuesReader(pool),
            notifications=NotificationsReader(pool),
            stripe=StripeReader(pool),
            committer=committer(queues, locks),
            progress=progress,
            published=published,
            runners=runners,
            locks=locks,
            hub=Hub(),
            feed_reader=(feed_reader := FeedReader(pool)),
            snapshots=SharedSnapshots(feed_reader),
            jwt_secret=jwt_secret(settings),
        )
        if projectors:
            channel = queues.recorder.channel_name  # type: ignore[attr-defined]
            if elect:
                container.processors = [stripe_processor(settings, database, container)]
            container.projector = ProjectorThread(
                database,
                channel,
                runners,
                progress,
                published,
                processors=container.processors,
                publishers=[live_rows.LiveRowsPublisher(pool, database), Cleanup(pool)] if elect else [],
                elect=elect,
            )
    except BaseException:
        if embedded is not None:
            embedded.stop()
        raise
    return container
