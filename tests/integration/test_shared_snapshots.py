"""Subscribers arriving together share one snapshot read (adapters/gateway.SharedSnapshots), on a
real PostgreSQL change feed, and never one older than what they need."""

from __future__ import annotations

import asyncio
import uuid

from adapters.gateway import SharedSnapshots
from domain.commands import Caller, JoinQueue, OpenQueue
from entrypoints.bootstrap import Container


def _queue_with_entries(container: Container, event_id: str, users: int) -> None:
    container.queues.execute([OpenQueue(event_id, Caller("owner"), "Live")], 1_000)
    container.queues.execute([JoinQueue(event_id, Caller(f"u{i}"), str(uuid.uuid4())) for i in range(users)], 2_000)
    for runner in container.runners:
        runner.catch_up()


def test_subscribers_arriving_together_share_one_read_and_get_their_own_rows(container: Container) -> None:
    _queue_with_entries(container, "live", 3)
    expected = container.feed_reader.snapshot("queue.summary", "live")
    assert expected[1]["live"]["waiting"] == 3
    snapshots = SharedSnapshots(container.feed_reader)

    async def together() -> list[tuple[int, dict[str, object]]]:
        return await asyncio.gather(*(snapshots.read("queue.summary", "live", 0, floor=0) for _ in range(50)))

    results = asyncio.run(together())
    assert snapshots.reads == 1
    assert all(result == expected for result in results)
    results[0][1].pop("live")  # a subscriber brings its copy forward: the others' rows stay
    assert all(result == expected for result in results[1:])


def test_a_shared_read_older_than_a_subscriber_needs_is_read_again(container: Container) -> None:
    _queue_with_entries(container, "show", 1)
    snapshots = SharedSnapshots(container.feed_reader)
    cursor, _ = container.feed_reader.snapshot("queue.summary", "show")

    async def scenario() -> None:
        assert (await snapshots.read("queue.summary", "show", 0, floor=cursor))[0] == cursor
        assert snapshots.reads == 1
        # a subscriber that began buffering after a cursor this read does not reach reads for itself
        await snapshots.read("queue.summary", "show", 0, floor=cursor + 1)
        assert snapshots.reads == 3  # the shared read, then its own

    asyncio.run(scenario())
