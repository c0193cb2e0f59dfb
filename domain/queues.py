"""The Queues application: runs batches of queue commands, each batch saved in one transaction."""

from __future__ import annotations

from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import IntegrityError

from domain.commands import Command, Outcome, apply_command
from domain.errors import QueueError, QueueNotFoundError
from domain.queue import Queue, QueueSummary, queue_id_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from contextlib import AbstractContextManager
    from uuid import UUID

    from eventsourcing.utils import EnvType

    Exclusive: TypeAlias = Callable[[Iterable[UUID]], AbstractContextManager[None]]

MAX_ATTEMPTS = 20


@dataclass(frozen=True)
class Executed:
    """A batch's answers (one per command, in order) and the log position of its last event."""

    outcomes: list[Outcome | QueueError]
    position: int | None


class ConcurrencyError(Exception):
    """Other writers kept winning the same queue versions; the batch was not applied."""


class Queues(Application[Any]):
    """Use cases of the queue context.

    `execute` applies commands in order to aggregates loaded once per batch and saves every
    new event of the batch in one `save()` (one transaction): group commit. Aggregates stay
    cached between batches and are fast-forwarded from the store before use, so a long queue
    is never replayed per command and another process's writes are always seen. When another
    process wins a version, the batch is retried on fresh aggregates.
    """

    is_snapshotting_enabled = True
    snapshot_every = 500
    cache_size = 10_000

    def __init__(self, env: EnvType | None = None) -> None:
        super().__init__(env)
        self._live: OrderedDict[UUID, Queue] = OrderedDict()
        self._snapshot_versions: dict[UUID, int] = {}
        self.conflicts = 0  # batches retried because another writer won a version

    def execute(self, commands: Sequence[Command], at: int, exclusive: Exclusive | None = None) -> Executed:
        """Apply `commands` in order at time `at` (epoch ms) and commit them together.

        `exclusive`, when given, is held around loading and saving the batch's queues, so that
        writers in other processes take turns on them instead of retrying. Returns, per command,
        its answer or the `QueueError` it was refused with, and the log position of the batch's
        last event (None when nothing changed).
        """
        queue_ids = {queue_id_for(command.event_id) for command in commands}
        for _ in range(MAX_ATTEMPTS):
            touched: dict[UUID, Queue] = {}
            try:
                with exclusive(queue_ids) if exclusive else nullcontext():
                    return self._execute_once(commands, at, touched)
            except IntegrityError:
                self.conflicts += 1
                for queue_id in touched:
                    self._live.pop(queue_id, None)
            except BaseException:
                for queue_id in touched:  # a half-applied batch must not stay cached
                    self._live.pop(queue_id, None)
                raise
        msg = f"gave up after {MAX_ATTEMPTS} attempts: other writers kept winning"
        raise ConcurrencyError(msg)

    def _execute_once(self, commands: Sequence[Command], at: int, touched: dict[UUID, Queue]) -> Executed:
        outcomes: list[Outcome | QueueError] = []
        loaded: set[UUID] = set()
        for command in commands:
            queue_id = queue_id_for(command.event_id)
            queue = touched.get(queue_id)
            if queue is None and queue_id not in loaded:
                queue = self._load(queue_id)
                loaded.add(queue_id)
                if queue is not None:
                    touched[queue_id] = queue
            try:
                queue, outcome = apply_command(queue, command, at)
            except QueueError as error:
                outcomes.append(error)
                continue
            touched[queue_id] = queue
            outcomes.append(outcome)
        recordings = self.save(*touched.values())
        for queue_id, queue in touched.items():
            self._remember(queue_id, queue)
            self._maybe_snapshot(queue_id, queue)
        positions = [r.notification.id for r in recordings if r.notification.id is not None]
        return Executed(outcomes, max(positions, default=None))

    def summary(self, event_id: str) -> QueueSummary:
        """The queue's current summary, read from the write model."""
        queue = self._load(queue_id_for(event_id))
        if queue is None:
            raise QueueNotFoundError(f"no queue is open for event {event_id}")
        return queue.summary()

    def _load(self, queue_id: UUID) -> Queue | None:
        queue = self._live.get(queue_id)
        if queue is None:
            try:
                queue = self.repository.get(queue_id)
            except AggregateNotFoundError:
                return None
            self._remember(queue_id, queue)
            return queue
        for stored in self.events.get(queue_id, gt=queue.version):  # writes of other processes
            if isinstance(stored, Queue.Event):
                stored.mutate(queue)
        return queue

    def _remember(self, queue_id: UUID, queue: Queue) -> None:
        self._live[queue_id] = queue
        self._live.move_to_end(queue_id)
        while len(self._live) > self.cache_size:
            self._live.popitem(last=False)

    def _maybe_snapshot(self, queue_id: UUID, queue: Queue) -> None:
        """Snapshot after `snapshot_every` events, or after as many events as the queue has entries.

        A snapshot costs O(entries), so spacing them by at least the entry count keeps the cost
        per event constant however long the queue grows; a cold load replays at most that many.
        """
        last = self._snapshot_versions.setdefault(queue_id, queue.version)
        if self.snapshots is not None and queue.version - last >= max(self.snapshot_every, len(queue.active)):
            self.snapshots.put([Snapshot.take(queue)])
            self._snapshot_versions[queue_id] = queue.version
