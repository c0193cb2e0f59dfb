"""Live gateway: fan-out latency of one change to N sockets and server memory per idle connection.

    .venv/bin/python scripts/bench/live.py                      # N = 1000, 5000, 10000
    .venv/bin/python scripts/bench/live.py --sizes 1000 --changes 3

For each N, on a fresh schema bench_live_<random> of --database-url (dropped at the end):
1. Lineup: `lineup serve` (1 worker) is started, one queue opened, a warm-up socket subscribed, changed and
   closed, and the server's VmRSS read. N sockets in --client-procs processes then authenticate, subscribe
   to `queue.summary {event_id}` and get their snapshot; VmRSS is read again ((after - before) / N is the
   memory per idle connection). Then --changes joins are made over HTTP, 1 s apart, and each socket's
   arrival time of the change frame is compared with the time the HTTP response came back (the commit
   acknowledged) and with the time just before the request.
2. Baseline: a bare `websockets` server in its own process; the same N sockets from the same number of
   processes; on each trigger it takes the time and calls `websockets.broadcast()` with a frame as long as
   Lineup's change frame. Latency is arrival minus that time. Memory is measured the same way.
For each change it also reads the server's main thread (the event loop, where the fan-out runs) from the
scheduler's accounting (/proc/PID/task/PID/schedstat): the CPU time it used from the trigger until every
socket had the frame, and the time it was runnable but waiting for a CPU (preempted).
With --phase sustained: commit -> socket latency under paced commands (joins and leaves of 10 queues, 100
sockets following their summaries; see docs/benchmarks.md for the matching), first for Lineup, then for
the bare pipeline of scripts/bench/barelive.py (one statement per command that commits the change and
its pg_notify, a LISTEN connection that sends it on) driven by the same load and the same clients.
Prints a summary and a JSON line last. Every process started here is stopped, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from barelive import read_bare_log, start_bare_live
from barews import BareServer, padded_frame
from commands import EVENTS_TABLE, code_version, command_line, drop_schema, open_queue
from httpload import join_path, percentile
from paced import Request, Sent, raw_request, run_paced
from server import Server, free_port, machine_busy, main_thread_sched, postgres_cpu, tree_cpu
from wsclients import ClientPool, Spec

from entrypoints.auth import issue

if TYPE_CHECKING:
    from collections.abc import Callable

HOST = "127.0.0.1"
TARGET_RATIO, TARGET_KIB = 1.25, 30.0
TARGET_SUSTAINED_P50_MS, TARGET_SUSTAINED_P99_MS = 5.0, 25.0
CATCH_UP_LIMIT = 120.0  # sustained: how long to wait after the load for the read side to show every command


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("LINEUP_BENCH_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres",
    )
    parser.add_argument("--sizes", default="1000,5000,10000", help="comma-separated socket counts")
    parser.add_argument("--client-procs", type=int, default=0, help="client processes (default: N/2500, 4 to 8)")
    parser.add_argument("--changes", type=int, default=5, help="changes (rounds) per N, 1 s apart")
    parser.add_argument("--concurrency", type=int, default=50, help="handshakes in flight per client process")
    parser.add_argument(
        "--phase",
        choices=("fanout", "sustained", "both"),
        default="fanout",
        help="fanout: one change to N sockets (--sizes); sustained: commit->socket latency under paced load",
    )
    parser.add_argument("--rate", type=int, default=1000, help="sustained: commands per second (joins and leaves)")
    parser.add_argument("--seconds", type=float, default=10.0, help="sustained: how long the load runs")
    parser.add_argument(
        "--queues", type=int, default=10, help="sustained: queues (even ones get joins, odd ones leaves)"
    )
    parser.add_argument(
        "--sockets", type=int, default=100, help="sustained: sockets, socket i follows queue i %% queues"
    )
    parser.add_argument(
        "--window", type=float, default=5.0, help="sustained: also report the latency per window of this many seconds"
    )
    parser.add_argument("--load-procs", type=int, default=2, help="sustained: load-generator processes")
    parser.add_argument(
        "--no-baseline", action="store_true", help="sustained: skip the bare pipeline (scripts/bench/barelive.py)"
    )
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not args.sizes or min(args.sizes) < 1 or args.changes < 1:
        parser.error("--sizes and --changes must be positive")
    if args.queues < 2 or args.sockets < args.queues or args.rate < 1 or args.seconds <= 0:
        parser.error("--queues >= 2, --sockets >= --queues, --rate and --seconds positive")
    return args


def vmrss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def stats(latencies_ms: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)
    if not ordered:
        return {"first": 0.0, "p50": 0.0, "p99": 0.0, "last": 0.0}
    values = {"first": ordered[0], "p50": percentile(ordered, 0.5), "p99": percentile(ordered, 0.99)}
    return {name: round(value, 2) for name, value in {**values, "last": ordered[-1]}.items()}


def procs_for(args: argparse.Namespace, n: int) -> int:
    return args.client_procs or max(4, min(8, -(-n // 2500)))


def connect_and_measure(spec: Spec, n: int, procs: int, pid: int, trigger: Any, changes: int) -> dict[str, Any]:
    """Warm up with one socket, read RSS, connect N, read RSS, run `changes` rounds of `trigger()`."""
    warm = ClientPool.start(Spec(spec.url, spec.mode, 10**7, 1, 1, spec.secret, spec.event_id), 1, 1)
    try:
        warm.wait_connected(60)
        warm.arm()
        trigger()
        warm.collect(10)
    finally:
        warm.close()
    time.sleep(1.0)
    rss_before = vmrss_kib(pid)
    pool = ClientPool.start(spec, n, procs)
    try:
        connected = pool.wait_connected()
        time.sleep(2.0)
        rss_after = vmrss_kib(pid)
        print(f"  {connected:,} connected in {pool.connect_seconds:.1f} s, errors {dict(pool.errors)}", flush=True)
        rounds = []
        for _ in range(changes):
            time.sleep(1.0)
            pool.arm()
            cpu, (busy, total), (loop_cpu, loop_wait) = tree_cpu(pid), machine_busy(), main_thread_sched(pid)
            t_request, t_ack = trigger()
            times, missing, frame_len = pool.collect(30)
            loop_cpu_now, loop_wait_now = main_thread_sched(pid)
            cpu = tree_cpu(pid) - cpu
            busy_now, total_now = machine_busy()
            machine = (busy_now - busy) / max(1e-9, total_now - total)
            from_ack = stats([(t - t_ack) / 1e6 for t in times])
            from_request = stats([(t - t_request) / 1e6 for t in times])
            rounds.append({"from_ack": from_ack, "from_request": from_request, "missing": missing})
            ack_ms = round((t_ack - t_request) / 1e6, 2)
            loop_cpu_ms, loop_wait_ms = (loop_cpu_now - loop_cpu) * 1000, (loop_wait_now - loop_wait) * 1000
            rounds[-1].update(
                frame_len=frame_len,
                server_cpu_ms=round(cpu * 1000),
                loop_cpu_ms=round(loop_cpu_ms, 1),
                loop_wait_ms=round(loop_wait_ms, 1),
                ack_ms=ack_ms,
                machine_busy=round(machine, 3),
            )
            print(
                f"    first {from_ack['first']:.1f}, p50 / p99 / last {from_ack['p50']:.1f} / {from_ack['p99']:.1f}"
                f" / {from_ack['last']:.1f} ms"
                f" (from request: p99 {from_request['p99']:.1f}), missing {missing}, frame {frame_len} B,"
                f" server CPU {cpu * 1000:.0f} ms (event loop {loop_cpu_ms:.1f}, waiting for a CPU"
                f" {loop_wait_ms:.1f}), machine busy {machine:.0%}",
                flush=True,
            )
    finally:
        pool.close()
    p99s = [r["from_ack"]["p99"] for r in rounds]
    return {
        "connected": connected,
        "connect_errors": dict(pool.errors),
        "connect_seconds": round(pool.connect_seconds, 2),
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "kib_per_conn": round((rss_after - rss_before) / max(1, connected), 2),
        "median_p99_ms": round(statistics.median(p99s), 2),
        "median_p50_ms": round(statistics.median(r["from_ack"]["p50"] for r in rounds), 2),
        "median_last_ms": round(statistics.median(r["from_ack"]["last"] for r in rounds), 2),
        "median_first_ms": round(statistics.median(r["from_ack"]["first"] for r in rounds), 2),
        "median_p99_from_request_ms": round(statistics.median(r["from_request"]["p99"] for r in rounds), 2),
        "median_loop_cpu_ms": round(statistics.median(r["loop_cpu_ms"] for r in rounds), 1),
        "median_loop_wait_ms": round(statistics.median(r["loop_wait_ms"] for r in rounds), 1),
        "frame_len": max(r["frame_len"] for r in rounds),
        "rounds": rounds,
    }


def start_lineup(args: argparse.Namespace, schema: str, secret: str, workdir: Path) -> Server:
    os.environ["LINEUP_WORKERS"] = "1"  # Server.start passes the environment on
    port = free_port(HOST)
    return Server.start(
        database_url=args.database_url, schema=schema, secret=secret, host=HOST, port=port, workdir=workdir
    )


def measure_lineup(args: argparse.Namespace, n: int, schema: str, secret: str, workdir: Path) -> dict[str, Any]:
    server = start_lineup(args, schema, secret, workdir)
    try:
        event_id = f"live-{n}-{secrets.token_hex(3)}"
        open_queue(server, secret, event_id)
        joined = iter(range(10**6))

        def join() -> tuple[int, int]:
            token = issue(secret, f"trigger-{n}-{next(joined)}", ttl=3600)
            started = time.time_ns()
            status, body = server.request("POST", f"/events/{event_id}/queue/join", token)
            acked = time.time_ns()
            if status != 201:
                msg = f"join answered {status}: {body}"
                raise RuntimeError(msg)
            return started, acked

        spec = Spec(f"ws://{HOST}:{server.port}/ws", "lineup", 0, n, args.concurrency, secret, event_id)
        print(f"Lineup, N={n:,} ({procs_for(args, n)} client processes):", flush=True)
        return connect_and_measure(spec, n, procs_for(args, n), server.process.pid, join, args.changes)
    except Exception:
        print(f"server log (tail):\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        server.stop()


def measure_bare(args: argparse.Namespace, n: int, frame_len: int) -> dict[str, Any]:
    bare = BareServer.start(HOST)
    try:
        frame = padded_frame(frame_len)

        def trigger() -> tuple[int, int]:
            started, _, _ = bare.broadcast(frame)
            return started, started

        spec = Spec(f"ws://{HOST}:{bare.port}/", "bare", 0, n, args.concurrency)
        print(f"bare websockets, N={n:,}, frame {len(frame)} B:", flush=True)
        return connect_and_measure(spec, n, procs_for(args, n), bare.pid, trigger, args.changes)
    finally:
        bare.stop()


# -- sustained: commit -> socket latency under paced load ----------------------------------------------


@dataclass
class Log:
    """What the benchmark reads back from the event log after the load."""

    ranks: dict[str, int]  # entry_id -> k for the k-th UserLeft event of its queue (1-based, version order)
    times: dict[tuple[str, str], int]  # ("join" | "leave", entry_id) -> the event's `at` (epoch ms)
    # a summary change's cursor -> its `recorded_at` (epoch ns): when the transaction that wrote it began
    recorded: dict[int, int]


def read_log(url: str, schema: str) -> Log:
    """The leaves' ranks, each join's and leave's time (`at`, the group committer's clock when the
    batch holding the command began, before its commit), and when each summary change's projector
    transaction began."""
    ranks: dict[str, int] = {}
    times: dict[tuple[str, str], int] = {}
    counts: collections.Counter[str] = collections.Counter()
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            f'SELECT originator_id, topic, state FROM "{schema}".{EVENTS_TABLE}'
            " WHERE topic LIKE %s OR topic LIKE %s ORDER BY originator_id, originator_version",
            ("%UserLeft%", "%UserJoined%"),
        ).fetchall()
        recorded = dict(
            conn.execute(
                "SELECT cursor, (extract(epoch FROM recorded_at) * 1e9)::bigint"
                f" FROM \"{schema}\".change_feed WHERE query = 'queue.summary'"
            ).fetchall()
        )
    for originator, topic, state in rows:
        event = json.loads(bytes(state))
        kind = "leave" if "UserLeft" in topic else "join"
        times[kind, event["entry_id"]] = event["at"]
        if kind == "leave":
            counts[str(originator)] += 1
            ranks[event["entry_id"]] = counts[str(originator)]
    return Log(ranks, times, recorded)


def schedule(
    args: argparse.Namespace, server: Server, secret: str, queues: list[str]
) -> tuple[list[Request], list[Request]]:
    """(prefill, load): command i of the load goes to queue i % Q at i / rate s; even queues get joins of new
    users, odd queues get leaves of users the prefill put there (each user leaves once)."""
    total = round(args.rate * args.seconds)
    load, prefill, leavers = [], [], collections.Counter[int]()
    for i in range(total):
        q = i % len(queues)
        if q % 2 == 0:
            token = issue(secret, f"load-{q}-{i}", ttl=6 * 3600)
            load.append(Request(i / args.rate, q, "join", raw_request(HOST, server.port, join_path(queues[q]), token)))
        else:
            token = issue(secret, f"prefill-{q}-{leavers[q]}", ttl=6 * 3600)
            path = f"/events/{queues[q]}/queue/leave"
            load.append(Request(i / args.rate, q, "leave", raw_request(HOST, server.port, path, token)))
            at = len(prefill) / 2000  # the prefill joins go in at 2,000/s
            prefill.append(Request(at, q, "join", raw_request(HOST, server.port, join_path(queues[q]), token)))
            leavers[q] += 1
    return prefill, load


def match(
    sent: list[Sent],
    frames: list[tuple[int, str, int, int, int]],
    queues: list[str],
    start_waiting: dict[int, int],
    log: Log,
    window: float,
) -> dict[str, Any]:
    """Per (command, socket following its queue): the first change frame whose `waiting` includes the command,
    timed from the command's HTTP answer (after its commit: a lower bound of commit -> socket) and from its
    event's time (before its commit: an upper bound).

    Join queues only grow: a join answered with position p is in every summary with waiting >= p (the
    position of a new entry is the number waiting right after its event). Leave queues only shrink: the
    k-th leave of a queue (k from the event log) is in every summary with waiting <= W0 - k.
    """
    by_socket: dict[int, list[tuple[int, int, int]]] = collections.defaultdict(list)
    queue_of: dict[int, int] = {}
    for socket, event_id, cursor, waiting, at in frames:
        by_socket[socket].append((cursor, waiting, at))
        queue_of[socket] = queues.index(event_id)
    followers: dict[int, list[int]] = collections.defaultdict(list)
    keys: dict[int, list[int]] = {}
    times: dict[int, list[int]] = {}
    cursors: dict[int, list[int]] = {}
    unordered = 0
    for socket, rows in by_socket.items():
        rows.sort()
        q = queue_of[socket]
        followers[q].append(socket)
        sign = 1 if q % 2 == 0 else -1  # keys ascending in both kinds of queue
        keys[socket] = [sign * waiting for _, waiting, _ in rows]
        times[socket] = [at for _, _, at in rows]
        cursors[socket] = [cursor for cursor, _, _ in rows]
        unordered += sum(1 for a, b in itertools.pairwise(keys[socket]) if b < a)
    from_ack: list[float] = []
    from_event: list[float] = []
    from_sent: list[float] = []
    event_to_change: list[float] = []  # the event's time -> the change's transaction began
    change_to_socket: list[float] = []  # the change's transaction began -> the frame read
    by_window: dict[int, list[float]] = collections.defaultdict(list)
    began = min((command.sent_ns for command in sent), default=0)
    missing = early = 0
    for command in sent:
        if not 200 <= command.status < 300:
            continue
        if command.kind == "join":
            if command.position is None:
                continue
            key = command.position
        else:
            key = -(start_waiting[command.queue] - log.ranks[command.entry_id])
        event_ns = log.times[command.kind, command.entry_id] * 1_000_000
        for socket in followers[command.queue]:
            at = bisect.bisect_left(keys[socket], key)
            if at == len(keys[socket]):
                missing += 1
                continue
            arrived = times[socket][at]
            early += arrived < command.acked_ns
            from_ack.append((arrived - command.acked_ns) / 1e6)
            from_event.append((arrived - event_ns) / 1e6)
            from_sent.append((arrived - command.sent_ns) / 1e6)
            recorded = log.recorded.get(cursors[socket][at])
            if recorded is not None:
                event_to_change.append((recorded - event_ns) / 1e6)
                change_to_socket.append((arrived - recorded) / 1e6)
            by_window[(command.sent_ns - began) // int(window * 1e9)].append(from_ack[-1])
    return {
        "from_ack": stats(from_ack),
        "from_event": stats(from_event),
        "from_sent": stats(from_sent),
        "event_to_change": stats(event_to_change),
        "change_to_socket": stats(change_to_socket),
        # commit -> socket per `window` s of the load (by when the command was sent): steady, spikes, or growing
        "windows": [{"from_s": w * window, **stats(by_window[w])} for w in sorted(by_window)],
        "pairs": len(from_ack),
        "missing": missing,
        "before_ack": early,
        "unordered_frames": unordered,
        "sockets_with_frames": len(by_socket),
    }


def wait_caught_up(
    server: Server, secret: str, queues: list[str], sent: list[Sent], start_waiting: dict[int, int]
) -> float | None:
    """Seconds until every queue's summary (GET) shows all the load's commands, plus 1 s for the frames
    (None: not within CATCH_UP_LIMIT)."""
    token = issue(secret, "bench-reader", ttl=3600)
    began = time.monotonic()
    for q, event_id in enumerate(queues):
        done = sum(1 for r in sent if r.queue == q and 200 <= r.status < 300)
        expected = done if q % 2 == 0 else start_waiting[q] - done
        while time.monotonic() - began < CATCH_UP_LIMIT:
            status, body = server.request("GET", f"/events/{event_id}/queue/summary", token)
            if status == 200 and body["waiting"] == expected:
                break
            time.sleep(0.2)
        else:
            return None
    time.sleep(1.0)
    return round(time.monotonic() - began, 1)


@dataclass(frozen=True)
class Pipeline:
    """What the sustained phase drives: Lineup, or the bare baseline (scripts/bench/barelive.py)."""

    name: str
    start: Callable[[argparse.Namespace, str, str, Path], Server]  # (args, schema, secret, workdir)
    read_log: Callable[[str, str], Log]  # (database url, schema)


def start_bare(args: argparse.Namespace, schema: str, _secret: str, workdir: Path) -> Server:
    port = free_port(HOST)
    return start_bare_live(database_url=args.database_url, schema=schema, host=HOST, port=port, workdir=workdir)


LINEUP = Pipeline("Lineup", start_lineup, read_log)
BARE = Pipeline("bare", start_bare, lambda url, schema: Log(*read_bare_log(url, schema)))


def measure_sustained(
    args: argparse.Namespace, pipeline: Pipeline, schema: str, secret: str, workdir: Path
) -> dict[str, Any]:
    print(f"sustained, {pipeline.name}:", flush=True)
    server = pipeline.start(args, schema, secret, workdir)
    pool: ClientPool | None = None
    try:
        tag = secrets.token_hex(3)
        queues = [f"load-{q}-{tag}" for q in range(args.queues)]
        for event_id in queues:
            open_queue(server, secret, event_id)
        prefill, load = schedule(args, server, secret, queues)
        print(f"  prefill {len(prefill):,} joins into the leave queues ...", flush=True)
        done = run_paced(HOST, server.port, prefill, procs=args.load_procs)
        refused = [r.status for r in done if r.status != 201]
        if refused:
            msg = f"prefill: {len(refused)} joins refused: {collections.Counter(refused)}"
            raise RuntimeError(msg)
        start_waiting = collections.Counter(r.queue for r in done)
        spec = Spec(
            f"ws://{HOST}:{server.port}/ws", "record", 0, args.sockets, args.concurrency, secret, "", tuple(queues)
        )
        pool = ClientPool.start(spec, args.sockets, 2)
        connected = pool.wait_connected(120)
        time.sleep(1.0)
        pool.arm()
        print(
            f"  {connected} sockets follow queue.summary of {len(queues)} queues; {len(load):,} commands"
            f" at {args.rate:,}/s for {args.seconds:g} s from {args.load_procs} processes ...",
            flush=True,
        )
        busy0, total0 = machine_busy()
        cpu0, pg0 = tree_cpu(server.process.pid), postgres_cpu()
        sent = run_paced(HOST, server.port, load, procs=args.load_procs)
        busy1, total1 = machine_busy()
        cpu1, pg1 = tree_cpu(server.process.pid), postgres_cpu()
        caught_up = wait_caught_up(server, secret, queues, sent, start_waiting)
        frames = pool.collect_frames(0)
        logged_errors = server.logged_errors()
        if caught_up is None or logged_errors:
            print(f"server log (tail):\n{server.log_tail()}", file=sys.stderr)
        log = pipeline.read_log(args.database_url, schema)
    except Exception:
        print(f"server log (tail):\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        if pool is not None:
            pool.close()
        server.stop()
    ok = [r for r in sent if 200 <= r.status < 300]
    window = (max(r.acked_ns for r in sent) - min(r.sent_ns for r in sent)) / 1e9
    http = sorted((r.acked_ns - r.sent_ns) / 1e6 for r in ok)
    late = sorted(r.late_ms for r in sent)
    result = {
        "pipeline": pipeline.name,
        "rate": args.rate,
        "seconds": args.seconds,
        "queues": args.queues,
        "sockets": connected,
        "commands": len(sent),
        "ok": len(ok),
        "errors": dict(collections.Counter(r.status for r in sent if not 200 <= r.status < 300)),
        "achieved_per_s": round(len(ok) / window, 1),
        "http_p50_ms": round(percentile(http, 0.5), 2),
        "http_p99_ms": round(percentile(http, 0.99), 2),
        "late_p99_ms": round(percentile(late, 0.99), 2),
        "frames": len(frames),
        "caught_up_after_s": caught_up,
        "logged_errors": len(logged_errors),
        "server_cpu_s": round(cpu1 - cpu0, 2),
        "postgres_cpu_s": round(pg1 - pg0, 2),
        "machine_busy": round((busy1 - busy0) / max(1e-9, total1 - total0), 3),
        **match(sent, frames, queues, start_waiting, log, args.window),
    }
    print_sustained(args, result)
    return result


def print_sustained(args: argparse.Namespace, result: dict[str, Any]) -> None:
    lat, upper = result["from_ack"], result["from_event"]
    print(
        f"  commit -> socket: p50 {lat['p50']:.1f} / p99 {lat['p99']:.1f} / max {lat['last']:.1f} ms from the HTTP"
        f" answer (a lower bound), p50 {upper['p50']:.1f} / p99 {upper['p99']:.1f} / max {upper['last']:.1f} ms from"
        f" the event's time (an upper bound) over {result['pairs']:,} (command, socket) pairs,"
        f" {result['missing']} missing,"
        f" {result['before_ack']} read before the HTTP answer; from the request: p50 {result['from_sent']['p50']:.1f}"
        f" / p99 {result['from_sent']['p99']:.1f} ms",
        flush=True,
    )
    hop1, hop2 = result["event_to_change"], result["change_to_socket"]
    print(
        f"  split: the event's time -> the change's transaction began p50 {hop1['p50']:.1f} / p99 {hop1['p99']:.1f}"
        f" ms, -> the socket p50 {hop2['p50']:.1f} / p99 {hop2['p99']:.1f} ms",
        flush=True,
    )
    print(
        f"  per {args.window:g} s of the load, p50 / p99 ms: "
        + ", ".join(f"{w['p50']:.1f} / {w['p99']:.1f}" for w in result["windows"]),
        flush=True,
    )
    print(
        f"  {result['ok']:,} commands ok at {result['achieved_per_s']:,.0f}/s (errors {result['errors']}), HTTP p50 /"
        f" p99 {result['http_p50_ms']:.1f} / {result['http_p99_ms']:.1f} ms,"
        f" pacing late p99 {result['late_p99_ms']:.1f} ms; {result['frames']:,} change frames ("
        + (
            f"read side caught up {result['caught_up_after_s']} s after the load"
            if result["caught_up_after_s"] is not None
            else f"read side NOT caught up within {CATCH_UP_LIMIT:.0f} s"
        )
        + f"; server log: {result['logged_errors']} errors);"
        f" server CPU {result['server_cpu_s']} s, PostgreSQL (every postgres process of the machine)"
        f" {result['postgres_cpu_s']} s; machine busy {result['machine_busy']:.0%}",
        flush=True,
    )


def sustained_verdict(lower: dict[str, float], upper: dict[str, float]) -> str:
    """Each pair's true commit -> socket lies between its time from the HTTP answer (which leaves after the
    commit) and from its event's time (taken before the commit), and so does each percentile: the targets
    are met when the upper bounds meet them, missed when a lower bound misses, and otherwise not known."""
    targets = {"p50": TARGET_SUSTAINED_P50_MS, "p99": TARGET_SUSTAINED_P99_MS}
    if all(upper[name] <= target for name, target in targets.items()):
        return "met"
    if any(lower[name] > target for name, target in targets.items()):
        return "NOT met"
    return "not known: between the bounds"


def ratio(value: float, base: float) -> float | None:
    return round(value / base, 2) if base > 0 else None


def report(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    sustained: dict[str, Any] | None,
    bare_sustained: dict[str, Any] | None,
) -> dict[str, Any]:
    if results:
        print("\nLive: fan-out of one change (latency from the HTTP ack; bare: from broadcast()) and idle memory")
        print(
            f"{'N':>7} | {'Lineup p50/p99/last ms':>24} | {'bare p50/p99/last ms':>22} | ratio p99 | KiB/conn L / bare"
            " | loop CPU / wait ms L, bare"
        )
    for r in results:
        lu, bare = r["lineup"], r["bare"]
        r["ratio_p99"] = ratio(lu["median_p99_ms"], bare["median_p99_ms"])
        ok = r["ratio_p99"] is not None and r["ratio_p99"] <= TARGET_RATIO
        print(
            f"{r['n']:>7,} | {lu['median_p50_ms']:7.1f} /{lu['median_p99_ms']:7.1f} /{lu['median_last_ms']:7.1f}"
            f" | {bare['median_p50_ms']:6.1f} /{bare['median_p99_ms']:6.1f} /{bare['median_last_ms']:6.1f}"
            f" | {r['ratio_p99']} {'met' if ok else 'NOT met'} | {lu['kib_per_conn']:.1f} / {bare['kib_per_conn']:.1f}"
            f" | {lu['median_loop_cpu_ms']:.1f} / {lu['median_loop_wait_ms']:.1f},"
            f" {bare['median_loop_cpu_ms']:.1f} / {bare['median_loop_wait_ms']:.1f}"
        )
    if results:
        print(
            f"(medians over {args.changes} changes; targets: ratio <= {TARGET_RATIO}, Lineup <= {TARGET_KIB} KiB/conn)"
        )
    if sustained is not None:
        lower, upper = sustained["from_ack"], sustained["from_event"]
        print(
            f"\nLive: commit -> socket under {sustained['achieved_per_s']:,.0f} commands/s,"
            f" {sustained['sockets']} sockets: p50 {lower['p50']:.1f}-{upper['p50']:.1f} /"
            f" p99 {lower['p99']:.1f}-{upper['p99']:.1f} ms (from the answer - from the event's time; targets"
            f" {TARGET_SUSTAINED_P50_MS:g} / {TARGET_SUSTAINED_P99_MS:g}: {sustained_verdict(lower, upper)});"
            f" machine busy {sustained['machine_busy']:.0%}"
        )
    if sustained is not None and bare_sustained is not None:
        bare_lower, bare_upper = bare_sustained["from_ack"], bare_sustained["from_event"]
        print(
            f"bare pipeline under {bare_sustained['achieved_per_s']:,.0f} commands/s, same clients:"
            f" p50 {bare_lower['p50']:.1f}-{bare_upper['p50']:.1f} /"
            f" p99 {bare_lower['p99']:.1f}-{bare_upper['p99']:.1f}"
            f" ms (targets {sustained_verdict(bare_lower, bare_upper)}); machine busy"
            f" {bare_sustained['machine_busy']:.0%}; ratio Lineup / bare p99 from the answer"
            f" {ratio(lower['p99'], bare_lower['p99'])}, from the event's time {ratio(upper['p99'], bare_upper['p99'])}"
        )
    print(f"command: {command_line()}  (code {code_version()})", flush=True)
    return {
        "benchmark": "live.fanout_and_idle_memory",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "code": code_version(),
        "changes": args.changes,
        "targets": {
            "ratio_p99": TARGET_RATIO,
            "kib_per_conn": TARGET_KIB,
            "sustained_p50_ms": TARGET_SUSTAINED_P50_MS,
            "sustained_p99_ms": TARGET_SUSTAINED_P99_MS,
        },
        "sizes": results,
        "sustained": sustained,
        "sustained_bare": bare_sustained,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    schema, secret = f"bench_live_{secrets.token_hex(5)}", secrets.token_urlsafe(48)
    workdir = Path(tempfile.mkdtemp(prefix="lineup-live-"))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    print(f"schema {schema} in {args.database_url}", flush=True)
    results = []
    try:
        sustained = bare_sustained = None
        if args.phase in ("sustained", "both"):
            sustained = measure_sustained(args, LINEUP, schema, secret, workdir)
            if not args.no_baseline:
                bare_sustained = measure_sustained(args, BARE, schema, secret, workdir)
        for n in args.sizes if args.phase in ("fanout", "both") else []:
            lineup = measure_lineup(args, n, schema, secret, workdir)
            bare = measure_bare(args, n, lineup["frame_len"])
            results.append({"n": n, "client_procs": procs_for(args, n), "lineup": lineup, "bare": bare})
        print(json.dumps(report(args, results, sustained, bare_sustained)), flush=True)
        return 0
    finally:
        with contextlib.suppress(psycopg.Error):
            drop_schema(args.database_url, schema)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
