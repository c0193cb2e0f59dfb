"""Queue locks read each locked queue's stored version, and a writer trusts its cache only at that version."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from domain.commands import Caller, Joined, JoinQueue, LeaveQueue, OpenQueue
from domain.queue import queue_id_for
from entrypoints.bootstrap import event_store, queue_locks

if TYPE_CHECKING:
    from entrypoints.bootstrap import Container
    from entrypoints.settings import Settings


def test_hold_yields_the_stored_version_of_each_locked_queue(container: Container) -> None:
    queues, locks = container.queues, container.locks
    queues.execute([OpenQueue("held", Caller("owner"), "Held")], 1_000, locks.hold)
    for n in range(2):
        queues.execute([JoinQueue("held", Caller(f"u{n}"), str(uuid.uuid4()))], 2_000 + n, locks.hold)
    held, never = queue_id_for("held"), queue_id_for("never-opened")

    version = queues.repository.get(held).version  # what replaying its events gives

    with locks.hold([never, held, held]) as stored:
        assert dict(stored) == {held: version, never: None}
    with locks.hold([]) as nothing:
        assert dict(nothing) == {}


def test_a_cached_queue_written_by_another_process_is_read_again(settings: Settings, container: Container) -> None:
    """This process caches the queue with u1 waiting; another writer (its own cache, its own locks)
    lets u1 leave. u1 joining here again is a new entry, not the stale cache's "already waiting"."""
    here, locks = container.queues, container.locks
    elsewhere = event_store(settings, container.database)
    elsewhere_locks = queue_locks(container.database, elsewhere)
    try:
        here.execute([OpenQueue("shared", Caller("owner"), "Shared")], 1_000, locks.hold)
        first = here.execute([JoinQueue("shared", Caller("u1"), str(uuid.uuid4()))], 2_000, locks.hold).outcomes[0]
        assert isinstance(first, Joined)
        assert first.created

        elsewhere.execute([LeaveQueue("shared", Caller("u1"))], 3_000, elsewhere_locks.hold)

        again = here.execute([JoinQueue("shared", Caller("u1"), str(uuid.uuid4()))], 4_000, locks.hold).outcomes[0]
        assert isinstance(again, Joined)
        assert again.created
        assert again.entry.entry_id != first.entry.entry_id
        assert here.conflicts == 0  # the version read under the lock showed the cache was behind
        assert here.summary("shared").waiting == 1
    finally:
        elsewhere_locks.close()
        elsewhere.close()
