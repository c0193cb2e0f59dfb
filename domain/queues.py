"""The Queues application: runs batches of commands (queues, Stripe, notifications), each saved in one transaction."""

from __future__ import annotations

from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from eventsourcing.application import AggregateNotFoundError, Application, ProcessingEvent
from eventsourcing.domain import Aggregate, Snapshot
from eventsourcing.persistence import IntegrityError

from domain.commands import Command, Outcome, apply_command, lock_ids
from domain.errors import QueueError, QueueNotFoundError
from domain.queue import Queue, QueueSummary, queue_id_for
from domain.stripe import StripeEvent

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from contextlib import AbstractContextManager
    from uuid import UUID

    from eventsourcing.persistence import ProcessRecorder, Tracking
    from eventsourcing.utils import EnvType

    # Held around a batch: the queues' locks; it yields each locked queue's stored version,
    # read after the locks were taken (None: no events stored for it).
    Exclusive: TypeAlias = Callable[[Iterable[UUID]], AbstractContextManager[Mapping[UUID, int | None]]]

MAX_ATTEMPTS = 20


@dataclass(frozen=True)
class Executed:
    """A batch's answers (one per command, in order) and the log position of its last event."""

    outcomes: list[Outcome | QueueError]
    position: int | None


class ConcurrencyError(Exception):
    """Other writers kept winning the same queue versions; the batch was not applied."""


class StaleReadError(IntegrityError):
    """A save refused because a queue the batch read had moved since it was read: another writer
    appends to these queues (the recorder raises it; see `Queues.execute`)."""


class AlreadyProcessedError(Exception):
    """The tracked position was recorded by another process first: the batch is not applied again."""


IMMUTABLE = (StripeEvent,)  # aggregates that never change after creation: only their ids are remembered
RECORDS_CACHED = 100_000


class _Batch:
    """The workspace of one batch: aggregates loaded once, the touched ones saved together.

    `unlocked`: no queue locks are held and the cached queues are used as they are; the version each
    queue was loaded at goes to the save (`expected`), which refuses the batch if another writer has
    moved any of them since (the batch then runs again under the locks)."""

    def __init__(self, app: Queues, *, optimistic: bool, unlocked: bool = False) -> None:
        self.app, self.optimistic, self.unlocked = app, optimistic, unlocked
        self.stored: Mapping[UUID, int | None] = {}  # the locked queues' stored versions
        self.loaded: dict[UUID, Aggregate | None] = {}
        self.touched: dict[UUID, Aggregate] = {}
        self.expected: dict[UUID, int | None] = {}  # unlocked: each queue's version when loaded

    def get(self, aggregate_id: UUID, *, optimistic: bool = False) -> Aggregate | None:
        if aggregate_id in self.touched:
            return self.touched[aggregate_id]
        if aggregate_id not in self.loaded:
            if optimistic and self.optimistic:
                # No round trip: the cached state or a new aggregate. If another writer got there
                # first, the save collides on (id, version) and the retry reads the store.
                self.loaded[aggregate_id] = self.app._cached(aggregate_id)
            elif self.unlocked:  # the cached state (else a read), checked when the batch is saved
                aggregate = self.app._cached(aggregate_id)
                if aggregate is None:
                    aggregate = self.app._load(aggregate_id)
                self.loaded[aggregate_id] = aggregate
                self.expected[aggregate_id] = aggregate.version if aggregate is not None else None
            elif aggregate_id in self.stored:  # a locked queue, whose stored version is known
                self.loaded[aggregate_id] = self.app._load_known(aggregate_id, self.stored[aggregate_id])
            else:
                self.loaded[aggregate_id] = self.app._load(aggregate_id)
        return self.loaded[aggregate_id]

    def add(self, aggregate: Aggregate) -> None:
        self.touched[aggregate.id] = aggregate

    def recorded(self, aggregate_id: UUID) -> bool:
        if aggregate_id in self.touched or self.app._seen(aggregate_id):  # records are never removed
            return True
        if self.optimistic:  # no round trip: a record this process has not seen is taken as new
            return False
        return self.app._load(aggregate_id) is not None


def _lru_put(cache: OrderedDict[Any, Any], key: Any, value: Any, size: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)


class Queues(Application[Any]):
    """Use cases of the queue context.

    `execute` applies commands in order to aggregates loaded once per batch and saves every
    new event of the batch in one `save()` (one transaction): group commit. Aggregates stay
    cached between batches, so a long queue is never replayed per command. Alone, a batch uses
    them as they are and its save checks they were current; once another writer has been seen,
    they are fast-forwarded from the store before use (unless the version stored, read under the
    queue's lock, shows the cached one is current). Either way another process's writes are always
    seen: when another process wins a version, the batch is retried on fresh aggregates.
    """

    is_snapshotting_enabled = True
    snapshot_every = 500
    cache_size = 10_000

    def __init__(self, env: EnvType | None = None) -> None:
        super().__init__(env)
        self._live: OrderedDict[UUID, Aggregate] = OrderedDict()
        # The ids (as ints, which the garbage collector does not track) of immutable aggregates
        # stored, e.g. Stripe events: kept as aggregates, 100,000 of them were ~300,000 more objects
        # for every full collection to traverse.
        self._recorded: OrderedDict[int, None] = OrderedDict()
        self._snapshot_versions: dict[UUID, int] = {}
        self.conflicts = 0  # batches retried because another writer won a version
        # Whether other writers append to these queues. Until one is seen, a batch's first attempt
        # takes no queue locks (see `execute`); a recorder that cannot check the versions a batch
        # was decided on (eventsourcing's own) means locks always.
        self.shared = not getattr(self.recorder, "verifies_versions", False)

    def construct_recorder(self) -> ProcessRecorder:
        """A process recorder: events and a tracking position can be saved in one transaction."""
        return self.factory.process_recorder()

    def execute(
        self,
        commands: Sequence[Command],
        at: int,
        exclusive: Exclusive | None = None,
        tracking: Tracking | None = None,
    ) -> Executed:
        """Apply `commands` in order at time `at` (epoch ms) and commit them together.

        `exclusive`, when given, is held around loading and saving the batch's queues, so that
        writers in other processes take turns on them instead of retrying. `tracking`, when given,
        is recorded in the same transaction (a process that follows the log: exactly once); if
        another process recorded it first, AlreadyProcessedError. Returns, per command, its answer
        or the `QueueError` it was refused with, and the log position of the batch's last event
        (None when nothing changed).

        While no other writer has been seen (`shared` is false), the first attempt holds no locks:
        it decides on the cached queues and its save checks, under the event table's lock, that each
        queue it read is still at the version it was read at. One round trip per batch instead of
        three (locks with the versions, save, unlock). When the check refuses the save, another
        writer exists: the batch runs again under the locks, and so does every later batch's first
        attempt. (A collision on the (id, version) key alone, e.g. a Stripe event another process
        recorded, says nothing about the queues: the batch runs again, and the next one unlocked.)
        """
        queue_ids = {queue_id for command in commands for queue_id in lock_ids(command)}
        for attempt in range(MAX_ATTEMPTS):
            unlocked = attempt == 0 and not self.shared
            batch = _Batch(self, optimistic=attempt == 0, unlocked=unlocked)
            try:
                with exclusive(queue_ids) if exclusive and not unlocked else nullcontext({}) as stored:
                    batch.stored = stored
                    return self._execute_once(commands, at, batch, tracking)
            except IntegrityError as refused:
                self.conflicts += 1
                self.shared = self.shared or isinstance(refused, StaleReadError)
                self._forget(batch)
                if tracking is not None and self._tracked(tracking) >= tracking.notification_id:
                    raise AlreadyProcessedError(tracking) from None
            except BaseException:
                self._forget(batch)  # a half-applied batch must not stay cached
                raise
        msg = f"gave up after {MAX_ATTEMPTS} attempts: other writers kept winning"
        raise ConcurrencyError(msg)

    def _execute_once(self, commands: Sequence[Command], at: int, batch: _Batch, tracking: Tracking | None) -> Executed:
        outcomes: list[Outcome | QueueError] = []
        for command in commands:
            try:
                outcomes.append(apply_command(batch, command, at))
            except QueueError as error:
                outcomes.append(error)
        if not batch.touched and tracking is None and not batch.expected:
            return Executed(outcomes, None)  # every command refused or a duplicate: nothing to save
        processing: ProcessingEvent[UUID] = ProcessingEvent(tracking)
        if batch.expected:  # answers decided on unlocked state: the save checks it is still current
            processing.saved_kwargs["expected_versions"] = batch.expected
        for aggregate_id, aggregate in batch.touched.items():
            # what `processing.collect_events(*aggregates)` does, without its isinstance checks against
            # runtime-checkable Protocols: 3.6 % of the HTTP process's GIL time under webhooks (py-spy)
            processing.events.extend(aggregate.collect_events())
            processing.aggregates[aggregate_id] = aggregate
        recordings = self._record(processing)
        self._notify(recordings)
        for aggregate_id, aggregate in batch.touched.items():
            self._remember(aggregate_id, aggregate)
            if isinstance(aggregate, Queue):
                self._maybe_snapshot(aggregate_id, aggregate)
        positions = [r.notification.id for r in recordings if r.notification.id is not None]
        return Executed(outcomes, max(positions, default=None))

    def _forget(self, batch: _Batch) -> None:
        for aggregate_id in (*batch.touched, *batch.loaded):
            self._live.pop(aggregate_id, None)

    def _tracked(self, tracking: Tracking) -> int:
        recorder: ProcessRecorder = self.recorder  # type: ignore[assignment]
        return recorder.max_tracking_id(tracking.application_name) or 0

    def summary(self, event_id: str) -> QueueSummary:
        """The queue's current summary, read from the write model."""
        queue = self._load(queue_id_for(event_id))
        if not isinstance(queue, Queue):
            raise QueueNotFoundError(f"no queue is open for event {event_id}")
        return queue.summary()

    def _cached(self, aggregate_id: UUID) -> Aggregate | None:
        return self._live.get(aggregate_id)

    def _seen(self, aggregate_id: UUID) -> bool:
        return aggregate_id.int in self._recorded

    def _load_known(self, aggregate_id: UUID, stored: int | None) -> Aggregate | None:
        """`_load`, knowing the version stored (read under the queue's lock): a cached aggregate
        at that version is current, and no stored events means no aggregate; neither needs a read.
        That read was one round trip per queue per batch, 12 % of the HTTP process's GIL time at
        1,000 commands/s (py-spy)."""
        cached = self._live.get(aggregate_id)
        if stored is None and cached is None:
            return None
        if cached is not None and cached.version == stored:
            return cached
        return self._load(aggregate_id)

    def _load(self, aggregate_id: UUID) -> Aggregate | None:
        aggregate = self._live.get(aggregate_id)
        if aggregate is None:
            try:
                aggregate = self.repository.get(aggregate_id)
            except AggregateNotFoundError:
                return None
            self._remember(aggregate_id, aggregate)
            return aggregate
        for stored in self.events.get(aggregate_id, gt=aggregate.version):  # writes of other processes
            if isinstance(stored, Aggregate.Event):
                stored.mutate(aggregate)
        return aggregate

    def _remember(self, aggregate_id: UUID, aggregate: Aggregate) -> None:
        if isinstance(aggregate, IMMUTABLE):
            _lru_put(self._recorded, aggregate_id.int, None, RECORDS_CACHED)
        else:
            _lru_put(self._live, aggregate_id, aggregate, self.cache_size)

    def _maybe_snapshot(self, queue_id: UUID, queue: Queue) -> None:
        """Snapshot after `snapshot_every` events, or after as many events as the queue has entries.

        A snapshot costs O(entries), so spacing them by at least the entry count keeps the cost
        per event constant however long the queue grows; a cold load replays at most that many.
        """
        last = self._snapshot_versions.setdefault(queue_id, queue.version)
        if self.snapshots is not None and queue.version - last >= max(self.snapshot_every, len(queue.active)):
            self.snapshots.put([Snapshot.take(queue)])
            self._snapshot_versions[queue_id] = queue.version
