"""WebSocket client processes for the live benchmark: many sockets per process, timestamps of one frame each.

Each process (multiprocessing, spawn) opens its share of the sockets with bounded concurrency, on asyncio
(uvloop when installed) with the `websockets` library and compression off. In `lineup` mode every socket
sends `auth`, subscribes to `queue.summary {event_id}` and waits for its snapshot before it counts as
connected; in `bare` mode a socket only connects. The parent drives the processes over pipes:
`arm` starts a round, `collect` returns, per socket, the `time.time_ns()` at which its first frame of the
round (a `change` frame in lineup mode) was read. Wall-clock nanoseconds are comparable across processes
of one machine, so the parent subtracts the trigger time it took itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import multiprocessing as mp
import signal
import time
from dataclasses import dataclass, field
from typing import Any

CHANGE = '{"type":"change"'
TOKEN_TTL = 6 * 3600


@dataclass
class Round:
    expected: int
    times: dict[int, int] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    frame_len: int = 0
    frames: list[tuple[int, int, str]] = field(default_factory=list)


@dataclass
class Spec:
    url: str
    mode: str  # "lineup" or "bare"
    first: int  # index of this process's first socket (users are live-{first}...)
    count: int
    concurrency: int
    secret: str = ""
    event_id: str = ""
    event_ids: tuple[str, ...] = ()  # "record" mode: socket i follows event_ids[(first + i) % len]


async def _open(spec: Spec, index: int, gate: asyncio.Semaphore) -> Any:
    from websockets.asyncio.client import connect

    async with gate:
        ws = await connect(spec.url, compression=None, ping_interval=None, open_timeout=120, close_timeout=5)
        if spec.mode in ("lineup", "record"):
            from entrypoints.auth import issue

            token = issue(spec.secret, f"live-{spec.first + index}", ttl=TOKEN_TTL)
            await ws.send(json.dumps({"type": "auth", "token": token}))
            event_id = spec.event_ids[(spec.first + index) % len(spec.event_ids)] if spec.event_ids else spec.event_id
            subscribe = {"type": "subscribe", "id": 1, "query": "queue.summary", "args": {"event_id": event_id}}
            await ws.send(json.dumps(subscribe))
            while True:
                text = await ws.recv()
                if text.startswith('{"type":"snapshot"'):
                    break
                if text.startswith('{"type":"error"'):
                    await ws.close()
                    raise RuntimeError(text[:120])
        return ws


async def _client(pipe: Any, spec: Spec) -> None:
    loop = asyncio.get_running_loop()
    state: dict[str, Any] = {"round": None, "closed": 0}
    gate = asyncio.Semaphore(spec.concurrency)
    started = time.monotonic()
    results = await asyncio.gather(*(_open(spec, i, gate) for i in range(spec.count)), return_exceptions=True)
    sockets = [r for r in results if not isinstance(r, BaseException)]
    errors = collections.Counter(f"{type(r).__name__}: {str(r)[:80]}" for r in results if isinstance(r, BaseException))

    async def read(ws: Any, index: int) -> None:
        try:
            async for text in ws:
                current: Round | None = state["round"]
                if current is None:
                    continue
                if spec.mode == "record":  # every change frame of the round, parsed at collect time
                    if text.startswith(CHANGE):
                        current.frames.append((index, time.time_ns(), text))
                    continue
                if index in current.times:
                    continue
                if spec.mode == "bare" or text.startswith(CHANGE):
                    current.times[index] = time.time_ns()
                    current.frame_len = len(text)
                    if len(current.times) >= current.expected:
                        current.done.set()
        except Exception:  # closed by the peer
            state["closed"] += 1

    readers = [asyncio.create_task(read(ws, i)) for i, ws in enumerate(sockets)]
    pipe.send({"connected": len(sockets), "errors": dict(errors), "seconds": time.monotonic() - started})
    while True:
        command, argument = await loop.run_in_executor(None, pipe.recv)
        if command == "arm":
            state["round"] = Round(len(sockets) - state["closed"])
            pipe.send("armed")
        elif command == "collect":
            current = state["round"]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(current.done.wait(), argument)
            state["round"] = None
            times = list(current.times.values())
            answer: dict[str, Any] = {
                "times": times,
                "missing": len(sockets) - len(times),
                "frame_len": current.frame_len,
            }
            if spec.mode == "record":  # (socket, event_id, cursor, waiting, arrival ns) of every change frame
                answer["frames"] = [
                    (spec.first + i, change["row"]["event_id"], change["cursor"], change["row"]["waiting"], at)
                    for i, at, change in ((i, at, json.loads(text)) for i, at, text in current.frames)
                ]
            pipe.send(answer)
        else:  # close
            await asyncio.wait([asyncio.create_task(ws.close()) for ws in sockets] or [asyncio.sleep(0)], timeout=10)
            for task in readers:
                task.cancel()
            pipe.send("closed")
            return


def client_main(pipe: Any, spec: Spec) -> None:
    # The measuring processes run without the cyclic garbage collector: they live for one run and
    # keep what they record, so a full collection walked more objects each time, and one paused a
    # process for 40-90 ms in a 30 s run at 1,000 commands/s (gc.callbacks, 2026-12-01 17:35), which
    # showed as latency of the server. Lineup's sockets and the bare server's use the same clients.
    gc.disable()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us; Ctrl-C must not leave tracebacks
    try:
        import uvloop

        uvloop.run(_client(pipe, spec))
    except ImportError:
        asyncio.run(_client(pipe, spec))


class ClientPool:
    """N sockets spread over client processes, driven in lockstep."""

    def __init__(self, processes: list[tuple[Any, Any]]) -> None:
        self.processes = processes  # (Process, parent end of the pipe)
        self.connected = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.connect_seconds = 0.0

    @classmethod
    def start(cls, spec: Spec, total: int, procs: int) -> ClientPool:
        context = mp.get_context("spawn")
        procs = max(1, min(procs, total))
        processes = []
        pool = cls(processes)
        first = 0
        for p in range(procs):
            count = total // procs + (1 if p < total % procs else 0)
            parent, child = context.Pipe()
            share = Spec(
                spec.url, spec.mode, first, count, spec.concurrency, spec.secret, spec.event_id, spec.event_ids
            )
            process = context.Process(target=client_main, args=(child, share), daemon=True, name=f"wsclients-{p}")
            process.start()
            processes.append((process, parent))
            first += count
        return pool

    def _receive(self, parent: Any, process: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not parent.poll(0.2):
            if not process.is_alive():
                msg = f"{process.name} exited with {process.exitcode}"
                raise RuntimeError(msg)
            if time.monotonic() > deadline:
                msg = f"{process.name} did not answer within {timeout:.0f} s"
                raise RuntimeError(msg)
        return parent.recv()

    def wait_connected(self, timeout: float = 600.0) -> int:
        for process, parent in self.processes:
            answer = self._receive(parent, process, timeout)
            self.connected += answer["connected"]
            self.errors.update(answer["errors"])
            self.connect_seconds = max(self.connect_seconds, answer["seconds"])
        return self.connected

    def arm(self) -> None:
        for _, parent in self.processes:
            parent.send(("arm", None))
        for process, parent in self.processes:
            self._receive(parent, process, 30)

    def collect_frames(self, timeout: float) -> list[tuple[int, str, int, int, int]]:
        """Record mode: every change frame read since `arm`, as (socket, event_id, cursor, waiting, ns)."""
        for _, parent in self.processes:
            parent.send(("collect", 0.0))  # nothing to wait for: the caller waited already
        frames: list[tuple[int, str, int, int, int]] = []
        for process, parent in self.processes:
            frames += self._receive(parent, process, timeout + 60)["frames"]
        return frames

    def collect(self, timeout: float) -> tuple[list[int], int, int]:
        """(receive times in ns, sockets without a frame, frame length) once all sockets have one or after timeout."""
        for _, parent in self.processes:
            parent.send(("collect", timeout))
        times: list[int] = []
        missing = frame_len = 0
        for process, parent in self.processes:
            answer = self._receive(parent, process, timeout + 30)
            times += answer["times"]
            missing += answer["missing"]
            frame_len = max(frame_len, answer["frame_len"])
        return times, missing, frame_len

    def close(self) -> None:
        """Close the sockets politely, then make sure every client process is gone."""
        for process, parent in self.processes:
            with contextlib.suppress(Exception):
                if process.is_alive():
                    parent.send(("close", None))
        for process, parent in self.processes:
            with contextlib.suppress(Exception):
                self._receive(parent, process, 20)
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
            parent.close()
        self.processes.clear()
