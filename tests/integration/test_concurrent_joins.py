"""Two processes x 16 threads join one queue: every acknowledged join is there once, positions contiguous."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import uuid
from collections import Counter

import pytest

from adapters.committer import GroupCommitter
from domain.commands import Caller, Joined, JoinQueue, OpenQueue
from entrypoints.bootstrap import build, event_store, open_database, queue_locks
from entrypoints.settings import Settings

PROCESSES, THREADS, JOINS_PER_THREAD = 2, 16, 12


def join_from_one_process(
    settings: Settings, process: int, locked: bool, shared: bool
) -> tuple[list[tuple[str, str, int]], int]:
    """Runs in a child process: its own event store and group committer, 16 threads joining.
    `shared`: told from the start that another process writes (else it finds out by a conflict)."""
    database, _ = open_database(settings)
    queues = event_store(settings, database)
    queues.shared = shared
    locks = queue_locks(database, queues)
    committer = GroupCommitter(lambda commands, at: queues.execute(commands, at, locks.hold if locked else None))
    committer.start()
    acknowledged: list[tuple[str, str, int]] = []
    lock = threading.Lock()

    def joiner(thread: int) -> None:
        for n in range(JOINS_PER_THREAD):
            user = f"p{process}-t{thread}-n{n}"
            outcome, _ = committer.submit(JoinQueue("big", Caller(user), str(uuid.uuid4()))).result(timeout=60)
            assert isinstance(outcome, Joined), outcome
            assert outcome.entry.position is not None
            with lock:
                acknowledged.append((outcome.entry.entry_id, user, outcome.entry.position))

    threads = [threading.Thread(target=joiner, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    committer.stop()
    locks.close()
    queues.close()
    return acknowledged, queues.conflicts


@pytest.mark.parametrize(
    ("locked", "shared"),
    [(True, True), (True, False), (False, False)],
    ids=["queue-locks", "locks-after-a-conflict", "optimistic-retry"],
)
def test_two_processes_of_sixteen_threads_join_one_queue(settings: Settings, locked: bool, shared: bool) -> None:
    container = build(settings, projectors=False)
    try:
        container.queues.execute([OpenQueue("big", Caller("owner"), "Big")], 1_000)
        context = multiprocessing.get_context("spawn")
        with context.Pool(PROCESSES) as pool:
            results = pool.starmap(join_from_one_process, [(settings, p, locked, shared) for p in range(PROCESSES)])
        acknowledged = [answer for answers, _ in results for answer in answers]
        if locked and shared:  # processes took turns: no batch had to be retried
            assert sum(conflicts for _, conflicts in results) == 0
        total = PROCESSES * THREADS * JOINS_PER_THREAD
        assert len(acknowledged) == total
        # Each answer came from a distinct committed version: positions at join time never repeat.
        assert sorted(position for _, _, position in acknowledged) == list(range(1, total + 1))

        container.runners[0].catch_up()
        queue = container.reader.summary("big")
        assert queue is not None
        listed = container.reader.event_entries(queue)
        assert Counter(entry.entry_id for entry in listed) == Counter(entry_id for entry_id, _, _ in acknowledged)
        assert [entry.position for entry in listed] == list(range(1, total + 1))
        by_entry = {entry.entry_id: entry for entry in listed}
        for entry_id, user, position in acknowledged:
            assert by_entry[entry_id].user_id == user
            assert by_entry[entry_id].position == position  # nobody left, so the answer still holds
    finally:
        container.close()


def test_coroutines_waiting_on_the_committer_get_their_own_answers(settings: Settings) -> None:
    """`GroupCommitter.run`: a batch's answers reach the event loop together, each to its own waiter;
    a waiter cancelled meanwhile is skipped, and its command, already handed over, still commits."""
    container = build(settings, projectors=False)
    container.start()  # its group committer, the one HTTP handlers hand commands to
    try:
        container.queues.execute([OpenQueue("async", Caller("owner"), "Async")], 1_000)
        users = [f"coroutine-{n}" for n in range(40)]

        async def join_all() -> list[object]:
            tasks = [
                asyncio.create_task(container.committer.run(JoinQueue("async", Caller(user), str(uuid.uuid4()))))
                for user in users
            ]
            await asyncio.sleep(0)  # every command is handed over
            tasks[0].cancel()
            return await asyncio.gather(*tasks, return_exceptions=True)

        async def abandon_threads_futures() -> object:
            """Coroutines waiting on `submit`'s futures, cancelled at once: some still wait in the
            inbox, and their futures are cancelled; a later command must still be answered."""
            for n in range(20):
                command = JoinQueue("async", Caller(f"abandoned-{n}"), str(uuid.uuid4()))
                asyncio.wrap_future(container.committer.submit(command)).cancel()
            command = JoinQueue("async", Caller("after"), str(uuid.uuid4()))
            return await asyncio.wait_for(asyncio.wrap_future(container.committer.submit(command)), 30)

        answers = asyncio.run(join_all())
        after, _ = asyncio.run(abandon_threads_futures())  # type: ignore[misc]
        assert isinstance(after, Joined)
        assert isinstance(answers[0], asyncio.CancelledError)
        joined = [outcome for outcome, _ in answers[1:]]  # type: ignore[misc]
        assert all(isinstance(outcome, Joined) for outcome in joined)
        assert [outcome.entry.user_id for outcome in joined] == users[1:]
        container.runners[0].catch_up()
        queue = container.reader.summary("async")
        assert queue is not None
        listed = container.reader.event_entries(queue)
        listed = [entry for entry in listed if entry.user_id in users]
        assert sorted(entry.user_id for entry in listed) == sorted(users)  # the cancelled one's join too
        assert sorted(outcome.entry.position for outcome in joined) == sorted(
            entry.position for entry in listed if entry.user_id != users[0]
        )
    finally:
        container.close()
