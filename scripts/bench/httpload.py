"""HTTP load for the join benchmark: raw asyncio HTTP/1.1 clients in processes (wrkload.py drives wrk instead).

Every request carries its own pre-generated token, so every request is a distinct user joining. Only
responses are counted that arrive for requests sent inside the timed window; 201 is a new entry,
any other 2xx is an existing entry (a reused token), anything else is an error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from typing import Any

from entrypoints.auth import issue

GRACE_SECONDS = 30.0  # how long requests still in flight at the end may take before they count as timeouts
TOKEN_TTL = 6 * 3600


@dataclass
class LoadResult:
    generator: str
    clients: int
    seconds: float  # the timed window, from the first request to the last response
    created: int = 0  # 201: a new entry (a new UserJoined event)
    existing: int = 0  # other 2xx: the user's active entry returned again
    errors: dict[str, int] = field(default_factory=dict)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    per_second: list[int] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    client_cpu_seconds: float = 0.0
    tokens: int = 0

    @property
    def ok(self) -> int:
        return self.created + self.existing

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def join_path(event_id: str) -> str:
    return f"/events/{event_id}/queue/join"


def user_tokens(secret: str, prefix: str, start: int, count: int) -> list[str]:
    """Tokens of users `{prefix}-{start}` ... made by the project's own issuer (before the clock starts)."""
    return [issue(secret, f"{prefix}-{i}", ttl=TOKEN_TTL) for i in range(start, start + count)]


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0.0
    rank = max(1, round(fraction * len(sorted_values) + 0.5))
    return sorted_values[min(rank, len(sorted_values)) - 1]


# -- raw asyncio clients in processes ------------------------------------------------------------------


@dataclass
class _Stats:
    start: float
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    per_second: collections.Counter[int] = field(default_factory=collections.Counter)
    samples: list[str] = field(default_factory=list)
    last: float = 0.0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 response: (status, body, keep-alive). Litestar always sends Content-Length."""
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    status = int(head[9:12])
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        msg = "response without content-length"
        raise ValueError(msg)
    length = int(head[at + 17 : head.find(b"\r\n", at + 2)])
    body = await reader.readexactly(length) if length else b""
    return status, body, b"\r\nconnection: close" not in head


async def _client(host: str, port: int, stream: tuple[Any, Any], requests: Any, deadline: float, stats: _Stats) -> None:
    reader, writer = stream
    loop_time = time.monotonic
    while loop_time() < deadline:
        request = next(requests, None)
        if request is None:
            stats.errors["tokens_exhausted"] += 1
            break
        sent = time.perf_counter()
        try:
            writer.write(request)
            status, body, keep_alive = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
            stats.errors[type(error).__name__] += 1
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
            continue
        now = time.perf_counter()
        stats.latencies.append(now - sent)
        stats.statuses[status] += 1
        stats.per_second[int(loop_time() - stats.start)] += 1
        stats.last = max(stats.last, loop_time())
        if status >= 300 and len(stats.samples) < 3:
            stats.samples.append(f"{status} {body[:200].decode(errors='replace')}")
        if not keep_alive:
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
    writer.close()


async def _drive(job: dict[str, Any], requests: list[bytes], ready: Any, go: Any, start: Any) -> dict[str, Any]:
    host, port = job["host"], job["port"]
    streams = [await asyncio.open_connection(host, port) for _ in range(job["connections"])]
    ready.put(job["index"])
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    await asyncio.sleep(max(0.0, start.value - time.monotonic()))
    stats = _Stats(start=start.value)
    cpu = time.process_time()
    shared = iter(requests)
    tasks = [
        asyncio.ensure_future(_client(host, port, s, shared, start.value + job["seconds"], stats)) for s in streams
    ]
    _, pending = await asyncio.wait(tasks, timeout=job["seconds"] + GRACE_SECONDS)
    for task in pending:  # a response that never came
        stats.errors["timeout"] += 1
        task.cancel()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            stats.errors[type(task.exception()).__name__] += 1
    return {
        "statuses": dict(stats.statuses),
        "errors": dict(stats.errors),
        "latencies": stats.latencies,
        "per_second": dict(stats.per_second),
        "samples": stats.samples,
        "last": stats.last,
        "cpu": time.process_time() - cpu,
    }


def _client_process(job: dict[str, Any], ready: Any, go: Any, start: Any, out: Any) -> None:
    tokens = user_tokens(job["secret"], f"py{job['index']}", 0, job["tokens"])
    head = f"POST {job['path']} HTTP/1.1\r\nHost: {job['host']}:{job['port']}\r\nContent-Length: 0\r\n"
    requests = [f"{head}Authorization: Bearer {token}\r\n\r\n".encode() for token in tokens]
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        out.put(runner.run(_drive(job, requests, ready, go, start)))


def run_python(
    host: str, port: int, event_id: str, secret: str, clients: int, procs: int, seconds: float, tokens: int
) -> LoadResult:
    procs = max(1, min(procs, clients))
    ctx = mp.get_context("spawn")
    ready, out, go, start = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    base = {"host": host, "port": port, "path": join_path(event_id), "secret": secret, "seconds": seconds}
    jobs = [
        {**base, "index": i, "connections": clients // procs + (i < clients % procs), "tokens": -(-tokens // procs)}
        for i in range(procs)
    ]
    workers = [ctx.Process(target=_client_process, args=(job, ready, go, start, out)) for job in jobs]
    for worker in workers:
        worker.start()
    _wait_ready(ready, workers)
    start.value = time.monotonic() + 0.2
    go.set()
    parts = [out.get(timeout=seconds + GRACE_SECONDS + 60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    return _merge(parts, clients, procs, seconds, start.value, tokens)


def _wait_ready(ready: Any, workers: list[Any]) -> None:
    waiting = len(workers)
    deadline = time.monotonic() + 120
    while waiting:
        with contextlib.suppress(Exception):
            ready.get(timeout=1.0)
            waiting -= 1
            continue
        if any(w.exitcode not in (None, 0) for w in workers) or time.monotonic() > deadline:
            msg = "a load-generator process failed to start (see its traceback above)"
            raise RuntimeError(msg)


def _merge(
    parts: list[dict[str, Any]], clients: int, procs: int, seconds: float, start: float, tokens: int
) -> LoadResult:
    statuses: collections.Counter[int] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    per_second: collections.Counter[int] = collections.Counter()
    latencies: list[float] = []
    for part in parts:
        statuses.update({int(k): v for k, v in part["statuses"].items()})
        errors.update(part["errors"])
        per_second.update({int(k): v for k, v in part["per_second"].items()})
        latencies.extend(part["latencies"])
    for status, count in statuses.items():
        if not 200 <= status < 300:
            errors[f"HTTP {status}"] += count
    latencies.sort()
    last = max((p["last"] for p in parts), default=start + seconds)
    return LoadResult(
        generator=f"python asyncio raw HTTP/1.1: {procs} processes x {clients // procs} keep-alive connections",
        clients=clients,
        seconds=max(seconds, last - start),
        created=statuses.get(201, 0),
        existing=sum(v for k, v in statuses.items() if 200 <= k < 300 and k != 201),
        errors=dict(errors),
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        max_ms=(latencies[-1] * 1000) if latencies else 0.0,
        per_second=[per_second.get(i, 0) for i in range(max(per_second, default=-1) + 1)],
        error_samples=[s for p in parts for s in p["samples"]][:5],
        client_cpu_seconds=sum(p["cpu"] for p in parts),
        tokens=tokens,
    )
