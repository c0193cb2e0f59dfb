"""Routing and backpressure of the gateway's hub and outboxes (no sockets needed)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from hypothesis import given
from hypothesis import strategies as st

from adapters.fanout import RESET, Change, Hub, Outbox, Subscription, apply_changes


def drain(outbox: Outbox) -> list[str]:
    frames = list(outbox.frames)
    outbox.frames.clear()
    return frames


def test_one_change_reaches_every_subscriber_of_its_query_and_args_with_its_own_id() -> None:
    async def scenario() -> None:
        hub = Hub()
        first, second, other = Outbox(), Outbox(), Outbox()
        subs = [Subscription("a", "queue.summary", "e1", first), Subscription(7, "queue.summary", "e1", second)]
        subs.append(Subscription("z", "queue.summary", "e2", other))
        for sub in subs:
            sub.pending = False
            hub.add(sub)
        hub.dispatch(Change(5, "queue.summary", "e1", "e1", "upsert", {"waiting": 1}))
        (to_first,) = [json.loads(f) for f in drain(first)]
        (to_second,) = [json.loads(f) for f in drain(second)]
        assert to_first == {
            "type": "change",
            "id": "a",
            "cursor": 5,
            "op": "upsert",
            "key": "e1",
            "row": {"waiting": 1},
        }
        assert to_second == {**to_first, "id": 7}
        assert drain(other) == []
        assert hub.dispatched == 5

    asyncio.run(scenario())


@given(st.lists(st.one_of(st.integers(-3, 3), st.sampled_from(["a", "b", "\u00e9"])), min_size=1, max_size=30))
def test_every_subscriber_gets_the_frame_of_its_own_id_whatever_ids_share_a_group(ids: list[int | str]) -> None:
    hub = Hub()
    outboxes = [Outbox() for _ in ids]
    for sub_id, outbox in zip(ids, outboxes, strict=True):
        sub = Subscription(sub_id, "q", "a", outbox)
        sub.pending = False
        hub.add(sub)
    hub.dispatch(Change(3, "q", "a", "k", "upsert", {"v": 3}))
    received = [[json.loads(frame) for frame in drain(outbox)] for outbox in outboxes]
    frame = {"type": "change", "cursor": 3, "op": "upsert", "key": "k", "row": {"v": 3}}
    assert received == [[{**frame, "id": sub_id}] for sub_id in ids]


def test_a_pending_subscription_buffers_until_its_snapshot_is_released() -> None:
    async def scenario() -> None:
        hub, outbox = Hub(), Outbox()
        sub = Subscription("s", "q", "a", outbox)
        hub.add(sub)
        hub.dispatch(Change(1, "q", "a", "k", "upsert", {"v": 1}))
        hub.dispatch(Change(2, "q", "a", "k", "remove", None))
        assert drain(outbox) == []
        rows = {"k": {"v": 0}, "j": {"v": 9}}
        apply_changes(rows, sub.buffer)
        assert rows == {"j": {"v": 9}}

    asyncio.run(scenario())


def test_an_overflowing_outbox_keeps_control_frames_and_asks_for_a_reset() -> None:
    async def scenario() -> None:
        hub, outbox = Hub(), Outbox(limit=3)
        sub = Subscription("s", "q", "a", outbox)
        sub.pending = False
        hub.add(sub)
        outbox.put('{"type":"pong"}')
        for cursor in range(1, 5):
            hub.dispatch(Change(cursor, "q", "a", "k", "upsert", {"v": cursor}))
        assert outbox.lagging
        hub.dispatch(Change(9, "q", "a", "k", "upsert", {}))  # dropped while lagging
        assert drain(outbox) == ['{"type":"pong"}', RESET]

    asyncio.run(scenario())


def test_waiting_for_a_cursor_returns_once_it_is_dispatched() -> None:
    async def scenario() -> None:
        hub = Hub()
        waiter = asyncio.create_task(hub.reached(3, timeout=2))
        await asyncio.sleep(0.01)
        hub.advance(2)
        await asyncio.sleep(0.01)
        assert not waiter.done()
        hub.advance(3)
        assert await waiter
        assert not await hub.reached(4, timeout=0.05)

    asyncio.run(scenario())


class _PausingSocket:
    """A socket that takes frames at once while it is writable and whose sends wait while it is
    paused, like uvicorn's: the gateway writes directly until a send suspends, then hands over to
    a task."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.sent: list[str] = []

    async def receive_text(self) -> str:
        await asyncio.Event().wait()
        return ""

    def write_now(self, data: str) -> bool:
        if not self.writable.is_set():
            return False  # as uvicorn's transport when paused: the frame goes through send_text
        self.sent.append(data)
        return True

    async def send_text(self, data: str) -> None:
        await self.writable.wait()
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        pass


def test_frames_are_written_during_dispatch_and_keep_their_order_when_a_send_suspends() -> None:
    from adapters.gateway import Closed, Session

    async def scenario() -> None:
        hub, socket = Hub(), _PausingSocket()
        session = Session(socket, hub, None, None, lambda _derived: None)  # type: ignore[arg-type]
        session.outbox.on_ready = session._wake_sender
        session._direct()
        sub = Subscription(1, "q", "a", session.outbox)
        sub.pending = False
        hub.add(sub)

        def cursors() -> list[int]:
            return [json.loads(frame)["cursor"] for frame in socket.sent]

        hub.dispatch(Change(1, "q", "a", "k", "upsert", {"v": 1}))
        assert cursors() == [1]  # written by dispatch itself: no task, no loop round trip
        socket.writable.clear()  # the transport is paused (a slow reader)
        for cursor in range(2, 6):
            hub.dispatch(Change(cursor, "q", "a", "k", "upsert", {"v": cursor}))
        assert cursors() == [1]
        assert len(session.outbox.frames) == 3  # the frame of cursor 2 waits inside its send
        assert session.outbox.write_now is None  # while the sender task runs, frames queue behind it
        await asyncio.sleep(0)
        socket.writable.set()
        for _ in range(5):
            await asyncio.sleep(0)
        assert cursors() == [1, 2, 3, 4, 5]
        assert session._sender is None
        assert session.outbox.write_now is not None
        hub.dispatch(Change(6, "q", "a", "k", "upsert", {"v": 6}))
        assert cursors() == [1, 2, 3, 4, 5, 6]  # direct again

        socket.writable.clear()
        hub.dispatch(Change(7, "q", "a", "k", "upsert", {"v": 7}))  # waits inside its send ...
        assert not session.outbox.frames  # ... with nothing queued behind it
        await asyncio.sleep(0)
        socket.writable.set()  # writable again, before the sender task has run
        hub.dispatch(Change(8, "q", "a", "k", "upsert", {"v": 8}))  # must not overtake 7
        for _ in range(5):
            await asyncio.sleep(0)
        assert cursors() == [1, 2, 3, 4, 5, 6, 7, 8]

        with contextlib.suppress(Closed):
            await session.close(1000, "bye")
        assert session.outbox.write_now is None
        hub.dispatch(Change(9, "q", "a", "k", "upsert", {"v": 9}))
        await asyncio.sleep(0)
        assert cursors() == [1, 2, 3, 4, 5, 6, 7, 8]  # nothing is written once the session closes

    asyncio.run(scenario())


class _Expiring:
    """Stands where a session does for `Expiries`: records when its `_expired` was called."""

    def __init__(self, fired: dict[str, float], name: str, *, fails: bool = False) -> None:
        self.fired, self.name, self.fails = fired, name, fails

    def _expired(self) -> None:
        self.fired[self.name] = asyncio.get_running_loop().time()
        if self.fails:
            raise RuntimeError(self.name)


def test_token_expiries_share_one_timer_fire_once_not_early_and_never_when_discarded() -> None:
    from adapters.gateway import Expiries

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        expiries, fired = Expiries.of(loop), {}
        assert Expiries.of(loop) is expiries  # one per loop
        now = loop.time()
        sessions = {name: _Expiring(fired, name, fails=name == "a") for name in "abcdef"}
        due = {"a": now + 0.05, "b": now + 0.10, "d": now + 0.02, "f": now}
        for name, at in [("a", due["a"]), ("b", due["b"]), ("c", now + 0.05), ("d", now + 0.2), ("e", now + 60)]:
            expiries.set(sessions[name], at)  # type: ignore[arg-type]
        expiries.discard(sessions["c"])  # type: ignore[arg-type]  # (the session ended)
        expiries.set(sessions["d"], due["d"])  # type: ignore[arg-type]  # (a refreshed token)
        expiries.set(sessions["f"], due["f"])  # type: ignore[arg-type]  # (already expired)
        for _ in range(500):
            if set(fired) >= set(due):
                break
            await asyncio.sleep(0.01)
        assert set(fired) == set(due)  # not c (discarded), not e (later); a's failure stopped nobody
        assert all(fired[name] >= at for name, at in due.items())  # none early
        await asyncio.sleep(0.3)
        assert set(fired) == set(due)  # each once
        assert expiries._timer is not None  # armed for e only
        assert expiries._armed_for == now + 60

    asyncio.run(scenario())
