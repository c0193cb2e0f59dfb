"""A client that stops reading does not slow the others and is not cut off: later it gets a reset snapshot.

Real sockets against a real `lineup serve`. The slow client connects with a tiny receive buffer and then
stops reading, so everything the server sends it piles up in the kernel's buffers and then in the
server's transport, its sends block and its outbox (1,000 frames) overflows. Meanwhile a fast client
follows the same query and must see every join in time. When the slow client reads again it must still
be connected, and after what was already on the wire it must get a `snapshot` with `reset: true` that
equals the read model.

To overflow quickly, rows are big (user ids of ~1,000 characters) and many: every join moves the
estimated time of every waiting entry, so each publishing round sends every waiting row again.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from tests.e2e.conftest import LineupServer

OWNER = "slow-owner"
PREFILL = 350  # waiting entries before the clients subscribe
# joins while the slow client is stalled, at most (about 20 are needed); every publication of the
# queue's rows (at most every 0.1 s at this length: adapters.postgres.live_rows) sends all of them
MAX_JOINS = 499 - PREFILL
IN_TIME = 5.0  # seconds within which the fast client must see each join (the slow one stalls far longer)
STALL_AFTER_LAST = IN_TIME + 1.0  # the slow client goes on not reading this long after the last join
OUTBOX_LIMIT = 1000  # adapters.fanout.Outbox: live frames queued per connection before it overflows
TIMEOUT = 10.0


def user(name: str) -> str:
    return f"{name}-{'x' * 1000}"  # rows of ~1.2 KB: fewer commands fill the buffers


def kernel_send_buffer_max() -> int:
    """How much a TCP socket of the server may buffer when the peer does not read (tcp_wmem's maximum)."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 8 * 1024 * 1024


async def subscribed(server: LineupServer, event_id: str, name: str, *, rcvbuf: int | None = None) -> ClientConnection:
    """A service connection subscribed to queue.event of `event_id` (the snapshot not read yet)."""
    sock = None
    if rcvbuf is not None:  # before connecting, so that the advertised TCP window stays small
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    ws = await websockets.connect(
        server.base_url.replace("http://", "ws://") + "/ws",
        sock=sock,
        compression=None,
        ping_interval=None,  # only the server's heartbeat may run
        max_queue=4 if rcvbuf is not None else 16,  # the slow client's library stops reading early too
        max_size=None,
    )
    await ws.send(json.dumps({"type": "auth", "token": server.token(name, role="service")}))
    ready = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert ready["type"] == "ready"
    query = {"type": "subscribe", "id": "q", "query": "queue.event", "args": {"event_id": event_id}}
    await ws.send(json.dumps(query))
    return ws


def apply(view: dict[str, Any], frame: dict[str, Any]) -> None:
    """A client's view of queue.event: a snapshot replaces it, a change upserts or removes one row."""
    assert frame["type"] in ("snapshot", "change"), frame
    if frame["type"] == "snapshot":
        view.clear()
        view.update({row["entry_id"]: row for row in frame["rows"]})
    elif frame["op"] == "upsert":
        view[frame["key"]] = frame["row"]
    else:
        view.pop(frame["key"], None)


class FastClient:
    """Reads every frame as it comes, in cursor order, and notes when each key first changed."""

    def __init__(self, ws: ClientConnection, snapshot: dict[str, Any]) -> None:
        self.ws = ws
        self.view: dict[str, Any] = {}
        apply(self.view, snapshot)
        self.cursor: int = snapshot["cursor"]
        self.seen: dict[str, float] = {}  # key -> time.monotonic() of its first change frame
        self.received = 0  # bytes of frames since the snapshot
        self.snapshots: list[dict[str, Any]] = []  # any further snapshot would be a reset: none expected
        self.task = asyncio.create_task(self._read())

    async def wait_for(self, key: str, deadline: float) -> None:
        """Until `key` has changed, or `deadline` (time.monotonic()) has passed."""
        while key not in self.seen and time.monotonic() < deadline and not self.task.done():
            await asyncio.sleep(0.002)

    async def _read(self) -> None:
        async for text in self.ws:
            frame = json.loads(text)
            assert frame["cursor"] >= self.cursor, (frame["cursor"], self.cursor)
            self.cursor = frame["cursor"]
            self.received += len(text)
            if frame["type"] == "snapshot":
                self.snapshots.append(frame)
            else:
                self.seen.setdefault(frame["key"], time.monotonic())
            apply(self.view, frame)


async def join(http: httpx.AsyncClient, server: LineupServer, event_id: str, name: str) -> tuple[str, float]:
    """(entry id, time.monotonic() when the answer arrived, i.e. after the commit)."""
    response = await http.post(f"/events/{event_id}/queue/join", headers=server.headers(user(name)))
    assert response.status_code == 201, response.text
    return str(response.json()["entry_id"]), time.monotonic()


async def open_long_queue(http: httpx.AsyncClient, server: LineupServer, event_id: str) -> None:
    opened = await http.post(f"/events/{event_id}/queue", json={"name": "Slow"}, headers=server.headers(OWNER))
    assert opened.status_code == 201, opened.text
    gate = asyncio.Semaphore(16)

    async def prefill(n: int) -> None:
        async with gate:
            await join(http, server, event_id, f"early-{n}")

    await asyncio.gather(*(prefill(n) for n in range(PREFILL)))


async def read_until_reset(ws: ClientConnection, view: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Apply frames to `view` up to and including a snapshot, which must be a reset: (it, bytes before it)."""
    before = 0
    while True:
        try:
            text = await asyncio.wait_for(ws.recv(), TIMEOUT)
        except TimeoutError:
            msg = f"no reset snapshot within {TIMEOUT} s after {before:,} bytes of changes"
            raise AssertionError(msg) from None
        frame = json.loads(text)
        apply(view, frame)
        if frame["type"] == "snapshot":
            assert frame["reset"] is True, frame
            return frame, before
        before += len(text)


def test_a_client_that_stops_reading_gets_a_reset_and_does_not_slow_the_others(server: LineupServer) -> None:
    event_id = f"slow-{uuid.uuid4().hex[:10]}"

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=TIMEOUT) as http:
            await open_long_queue(http, server, event_id)
            fast_ws = await subscribed(server, event_id, "fast")
            snapshot = json.loads(await asyncio.wait_for(fast_ws.recv(), TIMEOUT))
            assert (snapshot["type"], snapshot["reset"], len(snapshot["rows"])) == ("snapshot", False, PREFILL)
            fast = FastClient(fast_ws, snapshot)

            slow = await subscribed(server, event_id, "slow", rcvbuf=4096)
            slow_view: dict[str, Any] = {}
            apply(slow_view, json.loads(await asyncio.wait_for(slow.recv(), TIMEOUT)))
            assert len(slow_view) == PREFILL
            # From here on the slow client reads nothing until the joins are over.
            stalled_at = time.monotonic()

            # The slow client is sent what the fast one receives. Go on until that is more than the
            # kernel and the server's transport can hold for it plus a full outbox, with a margin.
            frame_size = len(json.dumps(snapshot["rows"][0])) + 60
            needed = 5 * (kernel_send_buffer_max() + 1024 * 1024 + OUTBOX_LIMIT * frame_size) // 4
            acked: list[tuple[str, float]] = []
            while fast.received < needed:
                assert len(acked) < MAX_JOINS, f"only {fast.received:,} of {needed:,} bytes after {len(acked)} joins"
                acked.append(await join(http, server, event_id, f"late-{len(acked)}"))
                # One join at a time, each seen by the fast client before the next one: then each is
                # its own publishing round, which re-sends every waiting row (its estimated time moved).
                await fast.wait_for(acked[-1][0], acked[-1][1] + IN_TIME)
            await asyncio.sleep(max(0.0, acked[-1][1] + STALL_AFTER_LAST - time.monotonic()))
            # a read waits for the projections and the published rows: this is the final state
            listed = (await http.get(f"/events/{event_id}/queue", headers=server.headers(OWNER))).json()
            expected = {row["entry_id"]: row for row in listed}
            assert len(expected) == PREFILL + len(acked)

            # The fast client saw every join in time and holds exactly the read model, with no reset.
            delays = {entry: round(fast.seen[entry] - at, 3) if entry in fast.seen else None for entry, at in acked}
            assert all(delay is not None and delay <= IN_TIME for delay in delays.values()), delays
            deadline = time.monotonic() + TIMEOUT
            while fast.view != expected and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert fast.view == expected
            assert fast.snapshots == []

            # The slow client reads again: first what was already on the wire, then a reset snapshot.
            stalled = time.monotonic() - stalled_at
            reset, on_the_wire = await read_until_reset(slow, slow_view)
            assert on_the_wire < fast.received  # frames were dropped, not all delivered late
            assert {row["entry_id"]: row for row in reset["rows"]} == expected == slow_view
            await slow.send(json.dumps({"type": "ping"}))  # still connected, and nothing else was pending
            assert json.loads(await asyncio.wait_for(slow.recv(), TIMEOUT)) == {"type": "pong"}

            worst = max(d for d in delays.values() if d is not None)
            print(
                f"\n{len(acked)} joins; fast: {fast.received:,} B, worst delay {worst * 1000:.0f} ms;"
                f" slow: stalled {stalled:.1f} s, {on_the_wire:,} B before its reset"
            )
            fast.task.cancel()
            await fast_ws.close()
            await slow.close()

    asyncio.run(scenario())
