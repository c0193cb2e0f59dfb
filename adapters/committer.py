"""Group commit: commands from many requests are applied in order and saved in one transaction."""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from domain.commands import Command, Outcome
    from domain.errors import QueueError
    from domain.queues import Executed

log = logging.getLogger(__name__)
Answer = tuple["Outcome | QueueError", "int | None"]


def epoch_ms() -> int:
    return time.time_ns() // 1_000_000


class GroupCommitter:
    """One writer thread drains every command waiting and executes them as one batch.

    Under load the batch grows by itself (everything that arrived while the previous batch was
    committing), so throughput follows the number of concurrent callers rather than the disk's
    sync rate. A future resolves only after its batch has committed: an answer is durable.
    """

    def __init__(
        self,
        execute: Callable[[list[Command], int], Executed],
        *,
        clock: Callable[[], int] = epoch_ms,
        max_batch: int = 1000,
    ) -> None:
        self._execute = execute
        self._clock = clock
        self._max_batch = max_batch
        self._inbox: queue.SimpleQueue[tuple[Command, Future[Answer]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="lineup-committer", daemon=True)
        self._last_at = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=30)

    def submit(self, command: Command) -> Future[Answer]:
        future: Future[Answer] = Future()
        self._inbox.put((command, future))
        return future

    def _run(self) -> None:
        while True:
            first = self._inbox.get()
            if first is None:
                return
            batch = [first]
            stopping = False
            while len(batch) < self._max_batch:
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._commit(batch)
            if stopping:
                return

    def _commit(self, batch: list[tuple[Command, Future[Answer]]]) -> None:
        self._last_at = max(self._last_at, self._clock())  # event times never go backwards here
        try:
            executed = self._execute([command for command, _ in batch], self._last_at)
        except Exception as error:
            log.exception("a batch of %d commands failed", len(batch))
            for _, future in batch:
                future.set_exception(error)
            return
        for (_, future), outcome in zip(batch, executed.outcomes, strict=True):
            future.set_result((outcome, executed.position))
