"""Rebuilding read models from the log beside the live ones, then comparing them or switching in one transaction.

1. Scratch schemas `<schema>__rb_<projection>` are dropped and created again (so a run killed
   with -9 leaves nothing a rerun trips on), with the read model's own DDL, unlogged. Their
   `change_feed_head` has no row, so the writers' change-feed statements add nothing there.
2. The real projections replay the log, each event decoded once: the bulk into in-memory twins of
   the writers (rebuild_memory.py, then COPY), the last batch through the PostgreSQL writers, up to
   the live position: the live tracking row, or for `rebuild` when no `lineup serve` projects, the
   log's head (then the switch moves the live tracking there too). Never beyond it.
3. The switch, in one transaction: the live tables are locked against writers (SHARE ROW
   EXCLUSIVE: readers go on; the live projector waits at its next write, it does not fail or
   skip), the scratch tables catch up to the live position, and each table is compared row by
   row. `verify` reports the differences and rolls back; `rebuild` changes only the differing
   live rows and puts each change on the change feed (see rebuild_diff.py), then commits.

Killing the process at any point leaves the live tables as they were: they only change in that
last transaction. A session advisory lock per projection keeps two runs from sharing a scratch schema.
"""

from __future__ import annotations

import gc
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from eventsourcing.utils import get_topic
from psycopg.sql import Identifier

from adapters.postgres import changes, live_rows, rebuild_diff, rebuild_scratch
from adapters.postgres.projector import record_positions
from adapters.postgres.rebuild_tables import TABLES, Model

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from eventsourcing.application import Application
    from eventsourcing.persistence import Notification

    from adapters.postgres.database import Database
    from adapters.postgres.rebuild_diff import Difference
    from adapters.postgres.rebuild_tables import ReadModel, Twin

BATCH = 2000
BUILDING, SWITCHING = "building", "switching"
SWITCH_WAIT = 60.0  # seconds the switch waits for a live projector that is behind the rebuilt tables


@dataclass
class Outcome:
    positions: dict[str, int]  # each projection's log position the rebuilt tables reflect
    counts: dict[tuple[str, str], int]  # (table, kind) -> rows that differed
    differences: list[Difference]  # each of them (verify only)
    events: int = 0  # log events read and processed
    seconds: float = 0.0
    switched: bool = False


class Rebuild:
    """One run over the given read models; `progress(phase, done, total)` follows it: BUILDING after
    each batch (log positions), then SWITCHING once the live tables are locked and caught up."""

    def __init__(  # noqa: PLR0913
        self,
        app: Application[Any],
        database: Database,
        models: Sequence[ReadModel],
        *,
        tracking_table: str,
        batch_size: int = BATCH,
        progress: Callable[[str, int, int], None] | None = None,
        twins: Mapping[str, Callable[[], Twin]] | None = None,
    ) -> None:
        self.app, self.database, self.batch_size = app, database, batch_size
        self.tracking_table, self.progress = tracking_table, progress or (lambda _phase, _done, _total: None)
        unknown = [m.name for m in models if m.name not in TABLES]
        if unknown:
            msg = f"no table description for {', '.join(unknown)}"
            raise ValueError(msg)
        self.models = [
            Model(m, rebuild_scratch.name(database.schema, m.name), {get_topic(t) for t in m.projection.event_types()})
            for m in models
        ]
        for m in self.models:
            m.twin = twins[m.model.name]() if twins and m.model.name in twins else None
        self.events = 0
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="lineup-rebuild-read")
        self._ahead: tuple[int, Future[Sequence[Notification]]] | None = None

    def run(self, *, apply: bool) -> Outcome:
        """Build, then compare (`apply=False`) or switch (`apply=True`)."""
        started = time.monotonic()
        collecting = gc.isenabled()
        gc.disable()  # the twins hold ~1 row object per event: each full collection walked them all
        try:
            with self.database.connect() as conn:
                self._prepare(conn)
                self._build(conn, apply=apply)
                outcome = self._switch(conn, apply=apply)
        finally:
            if collecting:
                gc.enable()
            self._reader.shutdown(cancel_futures=True)
            self._drop_scratch()
        outcome.events, outcome.seconds = self.events, time.monotonic() - started
        return outcome

    def _prepare(self, conn: psycopg.Connection[Any]) -> None:
        rebuild_scratch.claim(conn, self.database, [m.model.name for m in self.models])
        rebuild_scratch.check_migrated(conn, self.database.schema, self.tracking_table)
        for m in self.models:
            m.columns = rebuild_scratch.create(conn, self.database.schema, m.scratch, m.model.ddl, m.tables)
        rebuild_scratch.enter(conn, [m.scratch for m in self.models])

    def _drop_scratch(self) -> None:
        rebuild_scratch.drop(self.database, [m.scratch for m in self.models])

    def _projector_free(self, conn: psycopg.Connection[Any]) -> bool:
        """Whether no `lineup serve` projects (in a transaction: nobody can start until it ends)."""
        row = conn.execute(
            "SELECT pg_try_advisory_xact_lock(%s) AS won", (self.database.lock_key("projector"),)
        ).fetchone()
        return bool(row and row["won"])

    def _targets(self, conn: psycopg.Connection[Any], *, free: bool) -> dict[str, int]:
        if free:
            head = self.app.recorder.max_notification_id() or 0
            return {m.model.name: head for m in self.models}
        rows = conn.execute(
            f'SELECT application_name, notification_id FROM "{self.database.schema}".{self.tracking_table}'  # noqa: S608
            " WHERE application_name = ANY(%s)",
            ([m.model.name for m in self.models],),
        ).fetchall()
        tracked = {row["application_name"]: row["notification_id"] for row in rows}
        return {m.model.name: tracked.get(m.model.name) or 0 for m in self.models}

    def _build(self, conn: psycopg.Connection[Any], *, apply: bool) -> None:
        """Replay in the background until every scratch model is within a batch of its target."""
        while True:
            targets = self._targets(conn, free=apply and self._projector_free(conn))
            self.progress(BUILDING, min(m.position for m in self.models), max(targets.values()))
            if all(targets[m.model.name] - m.position <= self.batch_size for m in self.models):
                self._spill(conn)
                return
            self._advance(conn, targets)

    def _spill(self, conn: psycopg.Connection[Any]) -> None:
        """The twins' rows into the scratch tables; from here on the PostgreSQL writers go on."""
        for m in self.models:
            if m.twin is not None:
                with conn.transaction(), conn.cursor() as cursor:
                    m.twin.copy(cursor)
                m.twin = None

    def _advance(self, conn: psycopg.Connection[Any], targets: dict[str, int]) -> None:
        """One batch of events into the scratch tables, in one transaction."""
        behind = [m for m in self.models if m.position < targets[m.model.name]]
        if not behind:
            return
        start, stop = min(m.position for m in behind), max(targets[m.model.name] for m in behind)
        # No `stop` or `topics` in the query: with them PostgreSQL scans and sorts the whole rest of
        # the range for every page (a bitmap scan, then top-N), which makes a long rebuild quadratic.
        page = self._page(start)
        notifications = [n for n in page if n.id <= stop]
        if notifications:
            if any(m.twin is None for m in behind):
                with conn.transaction(), conn.cursor() as cursor, conn.pipeline():
                    self._process(cursor, notifications, behind, targets)
            else:
                self._process(None, notifications, behind, targets)
        reached = len(page) < self.batch_size or page[-1].id >= stop  # the whole range was read
        last = notifications[-1].id if notifications else stop
        for m in behind:
            m.position = targets[m.model.name] if reached else max(m.position, min(last, targets[m.model.name]))
        self.events += len(notifications)

    def _read(self, start: int) -> Sequence[Notification]:
        return self.app.recorder.select_notifications(start=start, limit=self.batch_size, inclusive_of_start=False)

    def _page(self, start: int) -> Sequence[Notification]:
        """The page after `start`; the next one is read on a thread while this one is processed.
        Only a full page is kept from ahead: ids commit in order, so the first n rows after a
        position never change, while a short page may have grown since."""
        ahead, self._ahead = self._ahead, None
        page = ahead[1].result() if ahead is not None and ahead[0] == start else self._read(start)
        if ahead is not None and ahead[0] == start and len(page) < self.batch_size:
            page = self._read(start)
        if len(page) == self.batch_size:
            self._ahead = (page[-1].id, self._reader.submit(self._read, page[-1].id))
        return page

    def _process(
        self,
        cursor: psycopg.Cursor[Any] | None,
        notifications: Sequence[Notification],
        behind: list[Model],
        targets: dict[str, int],
    ) -> None:
        writers: list[tuple[Model, Any]] = [
            (m, m.twin if m.twin is not None or cursor is None else m.model.writer(cursor)) for m in behind
        ]
        for notification in notifications:
            event = None
            for m, writer in writers:
                if m.position < notification.id <= targets[m.model.name] and notification.topic in m.topics:
                    event = event or self.app.mapper.to_domain_event(notification)
                    writer.position = notification.id  # as Projection.process_at does
                    m.handler(type(event))(m.model.projection, event, writer)
        for _m, writer in writers:
            writer.flush()

    def _switch(self, conn: psycopg.Connection[Any], *, apply: bool) -> Outcome:
        deadline = time.monotonic() + SWITCH_WAIT
        while True:
            outcome = None
            positions = [m.position for m in self.models]  # the scratch tables' state, restored on a rollback
            try:
                with conn.transaction():
                    free = apply and self._projector_free(conn)  # verify compares at the live position
                    self._lock_live(conn)
                    targets = self._targets(conn, free=free)
                    if all(m.position <= targets[m.model.name] for m in self.models):
                        while any(m.position < targets[m.model.name] for m in self.models):
                            self._advance(conn, targets)
                        self.progress(SWITCHING, max(targets.values()), max(targets.values()))
                        counts, found = self._compare(conn, rows=not apply)
                        outcome = Outcome(targets, counts, found, switched=apply)
                        if not apply:
                            raise psycopg.Rollback  # verify changes nothing
                        self._apply(conn, targets, free=free)
            except psycopg.errors.DeadlockDetected:
                # The live projector took its tables in another order (a join writes queue_entries
                # before queue_summary; the lock above takes queue_summary first) and PostgreSQL
                # rolled this transaction back, the scratch batches of this attempt included: nothing
                # changed, so try again from where the scratch tables are.
                for m, position in zip(self.models, positions, strict=True):
                    m.position = position
                outcome = None
            if outcome is not None:
                return outcome
            if time.monotonic() > deadline:
                msg = "the live projector stayed behind the rebuilt tables; try again"
                raise TimeoutError(msg)
            time.sleep(0.2)  # a projector took over meanwhile and is behind what we built: let it catch up

    def _lock_live(self, conn: psycopg.Connection[Any]) -> None:
        """Writers of these tables (the live projector, the clean-up, the live_rows publisher)
        wait until commit; readers do not."""
        schema = self.database.schema
        tables = [f'"{schema}".{t.name}' for m in self.models for t in m.tables]
        if any(m.live_rows for m in self.models):
            tables.append(f'"{schema}".live_rows')
            # first: a publication in progress finishes (it spans transactions), and no other starts
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self.database.lock_key(live_rows.PUBLICATIONS),))
        conn.execute(f"LOCK TABLE {', '.join(tables)} IN SHARE ROW EXCLUSIVE MODE")

    def _compare(
        self, conn: psycopg.Connection[Any], *, rows: bool
    ) -> tuple[dict[tuple[str, str], int], list[Difference]]:
        """Counts of differing rows per (table, kind), and the rows themselves when `rows`."""
        now = time.time_ns() // 1_000_000
        counts: dict[tuple[str, str], int] = {}
        found: list[Difference] = []
        with conn.cursor() as cursor:
            for m in self.models:
                for t in m.tables:
                    kinds = rebuild_diff.compare(cursor, self.database.schema, m.scratch, t, m.columns[t.name], now)
                    counts.update(((t.name, kind), n) for kind, n in kinds.items())
                    if rows and kinds:
                        found += rebuild_diff.differences(cursor, t)
        return counts, found

    def _apply(self, conn: psycopg.Connection[Any], targets: dict[str, int], *, free: bool) -> None:
        schema = self.database.schema
        with conn.cursor() as cursor:
            cursor.execute("SELECT set_config('search_path', %s, true)", (f'"{schema}"',))  # the feed's tables
            published = 0
            for m in self.models:
                for t in m.tables:
                    rebuild_diff.apply(cursor, schema, m.scratch, t, m.columns[t.name])
                    published += rebuild_diff.publish(cursor, schema, t)
                if m.live_rows:
                    published += rebuild_diff.republish_queues(cursor, m.tables)
            if published:
                cursor.execute(changes.NOTIFY)
            if free:  # nobody projects: the live tracking moves to what was rebuilt
                for m in self.models:
                    self._track(cursor, m.model.name, targets[m.model.name])

    def _track(self, cursor: psycopg.Cursor[Any], name: str, position: int) -> None:
        if position:
            table = Identifier(self.database.schema, self.tracking_table)
            record_positions(cursor, table, {name: position}, f"{name}:{position}")
