"""Queue locks read each locked queue's stored version, and a writer trusts its cache only at that version;
alone, it decides on its cache without the locks and its save checks the versions it decided on."""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import TYPE_CHECKING

from domain.commands import Caller, Joined, JoinQueue, LeaveQueue, OpenQueue, Recorded, RecordStripeEvent
from domain.queue import queue_id_for
from domain.stripe import StripeEnvelope
from entrypoints.bootstrap import event_store, queue_locks

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from adapters.postgres.locks import QueueLocks
    from domain.queues import Queues
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
    lets u1 leave. u1 joining here again is a new entry, not the stale cache's "already waiting".
    Known to share its queues (`shared`), the writer takes the locks, and the version read under
    them shows the cache is behind: no retry."""
    here, locks = container.queues, container.locks
    here.shared = True
    elsewhere, elsewhere_locks = _other_writer(settings, container)
    try:
        first = _open_and_join(here, locks, "shared", "u1")
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


def test_a_sole_writer_takes_no_locks_until_another_writer_shows(settings: Settings, container: Container) -> None:
    """Alone, a writer decides on its cache without the locks; the save checks the versions it read.
    Once another writer has moved a queue, that check refuses the batch once, it runs again under
    the locks with the right answer, and from then on every batch takes the locks."""
    here, locks = container.queues, container.locks
    held: list[set[uuid.UUID]] = []

    @contextlib.contextmanager
    def counted(queue_ids: Iterable[uuid.UUID]) -> Iterator[Mapping[uuid.UUID, int | None]]:
        held.append(set(queue_ids))
        with locks.hold(queue_ids) as stored:
            yield stored

    elsewhere, elsewhere_locks = _other_writer(settings, container)
    try:
        assert not here.shared
        first = _open_and_join(here, locks, "alone", "u1")
        here.execute([JoinQueue("alone", Caller("u2"), str(uuid.uuid4()))], 2_500, counted)
        assert held == []  # no other writer seen: no locks taken

        elsewhere.execute([LeaveQueue("alone", Caller("u1"))], 3_000, elsewhere_locks.hold)
        again = here.execute([JoinQueue("alone", Caller("u1"), str(uuid.uuid4()))], 4_000, counted).outcomes[0]
        assert isinstance(again, Joined)
        assert again.created  # not the stale cache's "already waiting"
        assert again.entry.entry_id != first.entry.entry_id
        assert here.conflicts == 1
        assert here.shared
        assert held == [{queue_id_for("alone")}]  # the run again, under the lock

        here.execute([JoinQueue("alone", Caller("u3"), str(uuid.uuid4()))], 5_000, counted)
        assert len(held) == 2  # from now on, locks
        assert here.summary("alone").waiting == 3
    finally:
        elsewhere_locks.close()
        elsewhere.close()


def test_a_refusal_decided_on_a_stale_cache_is_checked(settings: Settings, container: Container) -> None:
    """A batch that saves nothing still had its answers decided on the cache: a full queue here,
    which another writer has made room in. The refusal is checked like a save and not given."""
    here, locks = container.queues, container.locks
    elsewhere, elsewhere_locks = _other_writer(settings, container)
    try:
        here.execute([OpenQueue("small", Caller("owner"), "Small", capacity=1)], 1_000, locks.hold)
        here.execute([JoinQueue("small", Caller("u1"), str(uuid.uuid4()))], 2_000, locks.hold)
        elsewhere.execute([LeaveQueue("small", Caller("u1"))], 3_000, elsewhere_locks.hold)

        answer = here.execute([JoinQueue("small", Caller("u2"), str(uuid.uuid4()))], 4_000, locks.hold).outcomes[0]
        assert isinstance(answer, Joined), answer  # not QueueFullError from the stale cache
        assert here.conflicts == 1
    finally:
        elsewhere_locks.close()
        elsewhere.close()


def test_a_queue_only_read_by_a_batch_is_checked_too(settings: Settings, container: Container) -> None:
    """The batch writes queue B and answers from queue A without writing it: B's save must still
    refuse the batch when A has moved since it was cached (B's own key would not collide)."""
    here, locks = container.queues, container.locks
    elsewhere, elsewhere_locks = _other_writer(settings, container)
    try:
        first = _open_and_join(here, locks, "queue-a", "u1")
        here.execute([OpenQueue("queue-b", Caller("owner"), "B")], 2_000, locks.hold)
        elsewhere.execute([LeaveQueue("queue-a", Caller("u1"))], 3_000, elsewhere_locks.hold)

        batch = [
            JoinQueue("queue-a", Caller("u1"), str(uuid.uuid4())),  # the stale cache says: already waiting
            JoinQueue("queue-b", Caller("u2"), str(uuid.uuid4())),
        ]
        rejoined, joined_b = here.execute(batch, 4_000, locks.hold).outcomes
        assert isinstance(rejoined, Joined)
        assert rejoined.created
        assert rejoined.entry.entry_id != first.entry.entry_id
        assert isinstance(joined_b, Joined)
        assert joined_b.created
        assert here.conflicts == 1
    finally:
        elsewhere_locks.close()
        elsewhere.close()


def _other_writer(settings: Settings, container: Container) -> tuple[Queues, QueueLocks]:
    """Another process's writer: its own event store instance (its own cache) and queue locks."""
    elsewhere = event_store(settings, container.database)
    return elsewhere, queue_locks(container.database, elsewhere)


def _open_and_join(queues: Queues, locks: QueueLocks, event_id: str, user: str) -> Joined:
    queues.execute([OpenQueue(event_id, Caller("owner"), event_id)], 1_000, locks.hold)
    joined = queues.execute([JoinQueue(event_id, Caller(user), str(uuid.uuid4()))], 2_000, locks.hold).outcomes[0]
    assert isinstance(joined, Joined)
    assert joined.created
    return joined


def test_a_stripe_event_recorded_elsewhere_does_not_make_a_writer_take_locks(
    settings: Settings, container: Container
) -> None:
    """A Stripe event another process recorded collides on its key here (this process had not seen
    it): answered as a duplicate, but that says nothing about the queues, so batches stay unlocked."""
    here = container.queues
    elsewhere, elsewhere_locks = _other_writer(settings, container)
    delivery = {"id": "evt_seen_elsewhere", "object": "event", "type": "account.updated", "created": 1}
    delivery["data"] = {"object": {"id": "acct_1", "object": "account"}}
    record = RecordStripeEvent(StripeEnvelope.read(delivery), json.dumps(delivery))
    try:
        elsewhere.execute([record], 1_000)
        assert here.execute([record], 2_000).outcomes == [Recorded("evt_seen_elsewhere", duplicate=True)]
        assert here.conflicts == 1
        assert not here.shared
    finally:
        elsewhere_locks.close()
        elsewhere.close()
