"""Group commit: commands from many requests are applied in order and saved in one transaction."""

from __future__ import annotations

import asyncio
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
# Who waits for a command's answer: a thread (a concurrent Future), or a coroutine on an event loop.
Waiter = Future[Answer] | tuple[asyncio.AbstractEventLoop, "asyncio.Future[Answer]"]


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
        self._inbox: queue.SimpleQueue[tuple[Command, Waiter] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="lineup-committer", daemon=True)
        self._last_at = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._inbox.put(None)
        self._thread.join(timeout=30)

    def submit(self, command: Command) -> Future[Answer]:
        """For threads: a future of the command's answer."""
        future: Future[Answer] = Future()
        self._inbox.put((command, future))
        return future

    async def run(self, command: Command) -> Answer:
        """For coroutines: the command's answer, once its batch has committed."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Answer] = loop.create_future()
        self._inbox.put((command, (loop, waiter)))
        return await waiter

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

    def _commit(self, batch: list[tuple[Command, Waiter]]) -> None:
        # A thread's future cancelled while its command waited (`asyncio.wrap_future` cancels it with
        # its coroutine) gets no answer, and from here on it cannot be cancelled: setting a result
        # on a cancelled future raises, which used to end this thread and leave every later command
        # unanswered. The command itself was handed over: it runs either way.
        for _, waiter in batch:
            if isinstance(waiter, Future):
                waiter.set_running_or_notify_cancel()
        self._last_at = max(self._last_at, self._clock())  # event times never go backwards here
        answers: list[Answer | BaseException]
        try:
            executed = self._execute([command for command, _ in batch], self._last_at)
            answers = [(outcome, executed.position) for outcome in executed.outcomes]
        except Exception as error:
            log.exception("a batch of %d commands failed", len(batch))
            answers = [error] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Answer], Answer | BaseException]]] = {}
        for (_, waiter), answer in zip(batch, answers, strict=True):
            if isinstance(waiter, Future):
                _answer(waiter, answer)
            else:
                loop, future = waiter
                by_loop.setdefault(loop, []).append((future, answer))
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                log.debug("%d answers for a closed event loop dropped", len(settled))


def _settle(settled: list[tuple[asyncio.Future[Answer], Answer | BaseException]]) -> None:
    """On the waiters' event loop: each answer to its waiter."""
    for future, answer in settled:
        _answer(future, answer)


def _answer(future: Future[Answer] | asyncio.Future[Answer], answer: Answer | BaseException) -> None:
    """The answer to a waiter of either kind, unless it was cancelled meanwhile (done)."""
    if future.done():
        return
    if isinstance(answer, BaseException):
        future.set_exception(answer)
    else:
        future.set_result(answer)
