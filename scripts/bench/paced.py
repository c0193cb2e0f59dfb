"""Paced HTTP commands for the live latency benchmark: open-loop schedules in processes, one record per command.

    results = run_paced(host, port, requests, procs=2, connections=32)

`requests` is a list of `Request(at, queue, kind, raw)`: `at` seconds after the common start, `raw` the
whole HTTP/1.1 request (its own token). Each process (spawn; uvloop when installed) gets every `procs`-th
request, keeps `connections` keep-alive connections open and sends each request at its time on an idle
connection (a request whose time has come but finds none idle waits: its lateness is recorded). Per
command it returns `Sent(queue, kind, late_ms, sent_ns, acked_ns, status, entry_id, position)`, where the
two times are `time.time_ns()` just before the request is written and just after the response has been
read (wall-clock nanoseconds, comparable with the socket clients' on the same machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import multiprocessing as mp
import time
from dataclasses import dataclass
from typing import Any

from httpload import _read_response

# uvicorn closes a keep-alive connection idle for 5 s (its default, which `lineup serve` keeps); a request
# written to one as it closes got no answer (status 0: 72 of 200 commands at 10/s from 64 connections,
# each idle ~6 s). A connection idle longer than this is replaced before its next request.
IDLE_LIMIT = 4.0


@dataclass(frozen=True)
class Request:
    at: float
    queue: int
    kind: str
    raw: bytes


@dataclass(frozen=True)
class Sent:
    queue: int
    kind: str
    late_ms: float
    sent_ns: int
    acked_ns: int
    status: int
    entry_id: str
    position: int | None


def raw_request(host: str, port: int, path: str, token: str) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\n"
    return f"{head}Authorization: Bearer {token}\r\n\r\n".encode()


async def _drive(host: str, port: int, requests: list[Request], connections: int, start: float) -> list[Sent]:
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait((*await asyncio.open_connection(host, port), time.monotonic()))
    results: list[Sent] = []
    tasks: set[asyncio.Task[None]] = set()

    async def send(request: Request, late: float) -> None:
        reader, writer, used = await idle.get()
        if time.monotonic() - used > IDLE_LIMIT:  # the server may be closing it: a fresh one instead
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
        late = max(late, time.monotonic() - start - request.at)
        sent = time.time_ns()
        writer.write(request.raw)
        try:
            status, body, keep_alive = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            status, body, keep_alive = 0, b"", False
        acked = time.time_ns()
        entry: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            entry = json.loads(body) if status < 300 else {}
        results.append(
            Sent(
                request.queue,
                request.kind,
                late * 1000,
                sent,
                acked,
                status,
                entry.get("entry_id", ""),
                entry.get("position"),
            )
        )
        if not keep_alive:
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
        idle.put_nowait((reader, writer, time.monotonic()))

    for request in requests:
        delay = start + request.at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(send(request, max(0.0, -delay)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.wait(set(tasks))
    while not idle.empty():
        idle.get_nowait()[1].close()
    return results


def _process(host: str, port: int, requests: list[Request], connections: int, start: Any, out: Any) -> None:
    gc.disable()  # as in wsclients.client_main: a full collection here held requests back by 40-90 ms
    out.put("ready")
    while start.value == 0.0:  # the parent sets it once every process is ready
        time.sleep(0.01)
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        out.put(runner.run(_drive(host, port, requests, connections, start.value)))


def run_paced(host: str, port: int, requests: list[Request], *, procs: int = 2, connections: int = 32) -> list[Sent]:
    """Send every request at its time, counted from 0.5 s after every process has started."""
    context = mp.get_context("spawn")
    out, start = context.Queue(), context.Value("d", 0.0)
    workers = [
        context.Process(target=_process, args=(host, port, requests[p::procs], connections, start, out), daemon=True)
        for p in range(procs)
    ]
    for worker in workers:
        worker.start()
    results: list[Sent] = []
    try:
        for _ in workers:
            if out.get(timeout=120) != "ready":
                msg = "a load-generator process failed to start"
                raise RuntimeError(msg)
        start.value = time.monotonic() + 0.5  # CLOCK_MONOTONIC is one clock for every process of the machine
        for _ in workers:
            results += out.get(timeout=max((r.at for r in requests), default=0) + 120)
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join()
    return results
