"""Processes that follow the event log and answer some of its events with commands, exactly once."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import Tracking
from eventsourcing.utils import get_topic

from adapters.postgres.log import SharedPage, topic_page
from domain.queues import AlreadyProcessedError

if TYPE_CHECKING:
    from collections.abc import Callable

    from domain.commands import Command
    from domain.queues import Exclusive, Queues

log = logging.getLogger(__name__)
IDLE_TRACKING_INTERVAL = 5.0  # seconds between tracking writes while no event concerns the process


def epoch_ms() -> int:
    return time.time_ns() // 1_000_000


class EventProcessor:
    """Reads the log after its tracked position; events of `event_type` go through `policy`, and the
    resulting commands are executed with the log position recorded in the same transaction.

    So each event is processed exactly once, whichever process does it and however often it
    crashes: a batch either commits with its position or not at all, and a position recorded by
    another process first makes this one re-read the tracked position and go on from there.
    Batches without any relevant event write their position at most every few seconds (reading
    them again after a crash costs nothing and changes nothing).

    `app` must be this processor's own application instance: it is used from the projector
    thread, and the write path's instance belongs to the group committer's thread.
    """

    def __init__(  # noqa: PLR0913
        self,
        name: str,
        app: Queues,
        event_type: type,
        policy: Callable[[Any], Command | None],
        exclusive: Exclusive | None = None,
        *,
        batch_size: int = 500,
        clock: Callable[[], int] = epoch_ms,
    ) -> None:
        self.name, self.app, self.policy, self.exclusive = name, app, policy, exclusive
        self.topic = get_topic(event_type)
        self.topics = {self.topic}
        self.batch_size, self.clock = batch_size, clock
        self.position = self.tracked()
        self.processed = 0  # commands executed by this process
        self._written_at = time.monotonic()
        self._dirty = False  # the in-memory position is ahead of the recorded one

    def tracked(self) -> int:
        return self.app.recorder.max_tracking_id(self.name) or 0  # type: ignore[attr-defined]

    def __call__(self, head: int | None = None, page: SharedPage | None = None) -> int:
        """One batch; returns how many events it read (0 when the log has nothing new). `head` and
        `page`, when given, are the projector round's reads of the log (see `run_once`)."""
        if head is None:
            head = self.app.recorder.max_notification_id() or 0
        if head <= self.position:
            if self._dirty and time.monotonic() - self._written_at >= IDLE_TRACKING_INTERVAL:
                self._execute([], self.position)
            return 0
        shared = page.events_for(self.position, self.topics) if page is not None else None
        # Only the readers' topics cross the wire (a Stripe payload is a few KB), once per round.
        notifications, last = shared or topic_page(self.app, self.position, head, [self.topic], self.batch_size)
        commands = [
            command
            for notification in notifications
            if (command := self.policy(self.app.mapper.to_domain_event(notification))) is not None
        ]
        if commands or time.monotonic() - self._written_at >= IDLE_TRACKING_INTERVAL:
            self._execute(commands, last)
        else:
            self.position, self._dirty = last, True
        return max(1, len(notifications))

    def _execute(self, commands: list[Command], position: int) -> None:
        try:
            self.app.execute(commands, self.clock(), self.exclusive, tracking=Tracking(self.name, position))
        except AlreadyProcessedError:
            self.position = self.tracked()
            log.info("%s: another process got to position %d first; going on from there", self.name, self.position)
            return
        self.position, self._dirty, self._written_at = position, False, time.monotonic()
        self.processed += len(commands)
