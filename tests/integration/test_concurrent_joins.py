"""Two processes x 16 threads join one queue: every acknowledged join is there once, positions contiguous."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections import Counter

from adapters.committer import GroupCommitter
from domain.commands import Caller, Joined, JoinQueue, OpenQueue
from entrypoints.bootstrap import build, event_store, open_database
from entrypoints.settings import Settings

PROCESSES, THREADS, JOINS_PER_THREAD = 2, 16, 12


def join_from_one_process(settings: Settings, process: int) -> list[tuple[str, str, int]]:
    """Runs in a child process: its own event store and group committer, 16 threads joining."""
    database, _ = open_database(settings)
    queues = event_store(settings, database)
    committer = GroupCommitter(queues.execute)
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
    queues.close()
    print(f"process {process}: {queues.conflicts} conflicting batches retried")
    return acknowledged


def test_two_processes_of_sixteen_threads_join_one_queue(settings: Settings) -> None:
    container = build(settings, projectors=False)
    try:
        container.queues.execute([OpenQueue("big", Caller("owner"), "Big")], 1_000)
        context = multiprocessing.get_context("spawn")
        with context.Pool(PROCESSES) as pool:
            results = pool.starmap(join_from_one_process, [(settings, p) for p in range(PROCESSES)])
        acknowledged = [answer for result in results for answer in result]
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
