"""The raw ceiling: autocommit single-row INSERTs per second from N psycopg connections (threads or processes)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    import argparse

PAYLOAD_BYTES = 330
SCRATCH_TABLE = "raw_insert"


def add_arguments(parser: argparse.ArgumentParser, *, clients: int) -> None:
    """The options every benchmark measured beside this baseline shares."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get("LINEUP_BENCH_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL for both the baseline and the server (default: $LINEUP_BENCH_DATABASE_URL or local)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each timed phase")
    parser.add_argument("--baseline-clients", type=int, default=clients, help="psycopg connections for the baseline")
    parser.add_argument(
        "--baseline-mode",
        choices=["best", "threads", "processes"],
        default="best",
        help="run the baseline from threads, processes, or both and keep the higher (default)",
    )


def payload(size: int = PAYLOAD_BYTES) -> str:
    """A JSON object shaped like a stored event, padded to `size` bytes (what one durable append carries)."""
    body = {
        "originator_id": "0f4e3c2a-8a47-5d5b-9a43-6c2f0e0d1b7a",
        "originator_version": 123456,
        "topic": "domain.queue:Queue.UserJoined",
        "timestamp": "2026-11-25T12:00:00.000000+00:00",
        "entry_id": "5b0d8c3e-2f0e-4f5e-9f7a-1c8d2e3f4a5b",
        "user_id": "bench-user-000000",
        "at": 1_764_072_000_000,
        "pad": "",
    }
    text = json.dumps(body, separators=(",", ":"))
    body["pad"] = "x" * max(0, size - len(text))
    return json.dumps(body, separators=(",", ":"))


def create_scratch_table(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".{SCRATCH_TABLE} (id bigserial PRIMARY KEY, data jsonb NOT NULL)')


def drop_scratch_table(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{schema}".{SCRATCH_TABLE}')


@dataclass(frozen=True)
class BaselineResult:
    mode: str
    clients: int
    commits: int
    seconds: float
    errors: int

    @property
    def tps(self) -> float:
        return self.commits / self.seconds if self.seconds else 0.0


def _insert_until(conn: psycopg.Connection[Any], schema: str, start: float, seconds: float) -> tuple[int, int]:
    """Insert from `start` for `seconds` (time.monotonic is system-wide on Linux); returns (commits, errors)."""
    sql = f'INSERT INTO "{schema}".{SCRATCH_TABLE} (data) VALUES (%s::jsonb)'
    params = (payload(),)
    conn.execute(sql, params)  # prepared before the clock starts (prepare_threshold=0)
    time.sleep(max(0.0, start - time.monotonic()))
    deadline = start + seconds
    commits = errors = 0
    while time.monotonic() < deadline:
        try:
            conn.execute(sql, params)
        except psycopg.Error:
            errors += 1
            continue
        commits += 1
    return commits, errors


def _connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, prepare_threshold=0)


def _process_worker(url: str, schema: str, ready: Any, go: Any, start: Any, seconds: float, out: Any) -> None:
    with _connect(url) as conn:
        ready.put(1)
        go.wait()
        out.put(_insert_until(conn, schema, start.value, seconds))


def run_threads(url: str, schema: str, clients: int, seconds: float) -> BaselineResult:
    """`clients` threads in this process, one connection each (the GIL is released while waiting)."""
    results: list[tuple[int, int]] = []
    lock = threading.Lock()
    connected = threading.Barrier(clients + 1)
    start = [0.0]

    def worker() -> None:
        with _connect(url) as conn:
            connected.wait()
            connected.wait()  # the main thread sets the start time between the two waits
            outcome = _insert_until(conn, schema, start[0], seconds)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker, name=f"insert-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    connected.wait()
    start[0] = time.monotonic() + 0.1
    connected.wait()
    for thread in threads:
        thread.join()
    return BaselineResult("threads", clients, sum(c for c, _ in results), seconds, sum(e for _, e in results))


def run_processes(url: str, schema: str, clients: int, seconds: float) -> BaselineResult:
    """`clients` processes, one connection each (no GIL shared between them)."""
    ctx = mp.get_context("spawn")
    ready, out, go, start = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    procs = [
        ctx.Process(target=_process_worker, args=(url, schema, ready, go, start, seconds, out), name=f"insert-{i}")
        for i in range(clients)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=60)
    start.value = time.monotonic() + 0.2
    go.set()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    return BaselineResult("processes", clients, sum(c for c, _ in results), seconds, sum(e for _, e in results))
