"""Durable joins into ONE queue through the real HTTP server, measured beside the raw PostgreSQL ceiling.

    .venv/bin/python scripts/bench/commands.py --seconds 10

1. Baseline: autocommit single-row INSERTs (a ~330-byte jsonb row, bigserial PK) per second from
   --baseline-clients psycopg connections, once from threads and once from processes; the higher counts.
2. Project: `lineup serve` in a subprocess on a fresh schema of the same database; one queue is opened,
   then --clients concurrent clients join it for --seconds, every request as a distinct user (tokens made
   before the clock starts). wrk drives the load when it is installed, else raw asyncio clients in processes.
3. Verifies in SQL that the schema's log holds at least one UserJoined event per 2xx answer, prints the
   figures, and a JSON line last. The scratch table, the schema and the server are removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpload
import pgbaseline
import psycopg
import wrkload
from server import Server, free_port, machine_busy, postgres_cpu, tree_cpu

from entrypoints.auth import issue

HOST = "127.0.0.1"
TARGET_RATIO = 0.5
EVENTS_TABLE = "queues_events"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    pgbaseline.add_arguments(parser, clients=16)
    parser.add_argument("--clients", type=int, default=64, help="concurrent HTTP clients joining the queue")
    parser.add_argument("--port", type=int, default=0, help="port for `lineup serve` (default: a free one)")
    parser.add_argument(
        "--load-generator", choices=["auto", "wrk", "python"], default="auto", help="auto: wrk if installed"
    )
    parser.add_argument("--client-procs", type=int, default=4, help="processes of the python load generator")
    parser.add_argument(
        "--tokens", type=int, default=0, help="distinct users to pre-generate (default: 12,000 per second, min 20,000)"
    )
    parser.add_argument("--workers", type=int, default=2, help="LINEUP_WORKERS for the server (default 2: both cores)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.clients < 1 or args.baseline_clients < 1:
        parser.error("--seconds, --clients and --baseline-clients must be positive")
    args.tokens = args.tokens or max(20_000, int(12_000 * args.seconds))
    return args


def command_line() -> str:
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(Path.cwd())
    return shlex.join([str(python), *sys.argv])


def code_version() -> str:
    """The commit measured (with `+dirty` when tracked files differ from it), or `unknown` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run_baseline(args: argparse.Namespace, schema: str) -> tuple[pgbaseline.BaselineResult, list[dict[str, Any]]]:
    modes = ["threads", "processes"] if args.baseline_mode == "best" else [args.baseline_mode]
    runners = {"threads": pgbaseline.run_threads, "processes": pgbaseline.run_processes}
    results = []
    for mode in modes:
        print(f"baseline: {args.baseline_clients} {mode} inserting for {args.seconds:g} s ...", flush=True)
        result = runners[mode](args.database_url, schema, args.baseline_clients, args.seconds)
        print(f"  {result.tps:,.0f} tx/s ({result.commits:,} commits, {result.errors} errors)", flush=True)
        results.append(result)
    best = max(results, key=lambda r: r.tps)
    return best, [{**asdict(r), "tps": round(r.tps, 1)} for r in results]


def open_queue(server: Server, secret: str, event_id: str) -> None:
    owner = issue(secret, "bench-owner", ttl=6 * 3600)
    status, body = server.request("POST", f"/events/{event_id}/queue", owner, {"name": "Benchmark queue"})
    if status != 201:
        msg = f"opening the queue answered {status}: {body}"
        raise RuntimeError(msg)


def drive_load(args: argparse.Namespace, server: Server, secret: str, event_id: str, workdir: Path) -> Any:
    use_wrk = args.load_generator == "wrk" or (args.load_generator == "auto" and shutil.which("wrk"))
    where = f"http://{server.host}:{server.port}"
    if use_wrk:
        print(f"load: wrk, {args.clients} connections, {args.tokens:,} tokens, {args.seconds:g} s ...", flush=True)
        return wrkload.run_wrk(where, event_id, secret, args.clients, args.seconds, args.tokens, workdir)
    print(
        f"load: wrk not found; python asyncio clients ({args.client_procs} processes, {args.clients} connections,"
        f" {args.tokens:,} tokens), {args.seconds:g} s ...",
        flush=True,
    )
    return httpload.run_python(
        server.host, server.port, event_id, secret, args.clients, args.client_procs, args.seconds, args.tokens
    )


def count_joined(url: str, schema: str) -> tuple[int, int]:
    """(UserJoined events in the log, entries in the queues read model)."""
    with psycopg.connect(url, autocommit=True) as conn:
        events = conn.execute(
            f'SELECT count(*) FROM "{schema}".{EVENTS_TABLE} WHERE topic LIKE %s', ("%UserJoined%",)
        ).fetchone()
        entries = conn.execute(f'SELECT count(*) FROM "{schema}".queue_entries').fetchone()
    return int(events[0] if events else 0), int(entries[0] if entries else 0)


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def measure_project(args: argparse.Namespace, server: Server, secret: str, workdir: Path) -> dict[str, Any]:
    event_id = f"bench-{secrets.token_hex(4)}"
    open_queue(server, secret, event_id)
    cpu_before = (tree_cpu(server.process.pid), postgres_cpu(), *machine_busy())
    load = drive_load(args, server, secret, event_id, workdir)
    cpu_after = (tree_cpu(server.process.pid), postgres_cpu(), *machine_busy())
    metrics = server.metrics()
    window = load.seconds
    cpu = {
        "server_cores": round((cpu_after[0] - cpu_before[0]) / window, 2),
        "postgres_cores": round((cpu_after[1] - cpu_before[1]) / window, 2),
        "load_generator_cores": round(load.client_cpu_seconds / window, 2),
        "machine_busy_fraction": round((cpu_after[2] - cpu_before[2]) / max(1e-9, cpu_after[3] - cpu_before[3]), 2),
        "cores": os.cpu_count(),
    }
    lag = metrics.get('lineup_projection_lag_events{projection="queues"}')
    return {"event_id": event_id, "load": load, "cpu": cpu, "projection_lag_events_at_end": lag}


def report(
    args: argparse.Namespace, baseline: pgbaseline.BaselineResult, runs: list[Any], project: dict[str, Any]
) -> dict[str, Any]:
    load: httpload.LoadResult = project["load"]
    ratio = load.rate / baseline.tps if baseline.tps else 0.0
    cpu = project["cpu"]
    lines = [
        "",
        "Commands: durable joins into one queue",
        f"  raw PG tx/s ({baseline.clients} {baseline.mode}, 1-row autocommit INSERT): {baseline.tps:,.0f}",
        *(f"    {r['mode']}: {r['tps']:,.0f} tx/s" for r in runs),
        f"  joins/s ({load.clients} clients, 2xx only):                {load.rate:,.0f}"
        f"  ({load.ok:,} in {load.seconds:.2f} s; 201 {load.created:,}, other 2xx {load.existing:,})",
        f"  latency p50 / p99 / max:                              {load.p50_ms:.1f} / {load.p99_ms:.1f}"
        f" / {load.max_ms:.1f} ms",
        f"  errors:                                               {load.error_count} {load.errors or ''}",
        f"  ratio joins/s / raw tx/s:                             {ratio:.3f}"
        f"  (target >= {TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'NOT met'})",
        f"  UserJoined events in the log / 2xx answers:           {project['events']:,} / {load.ok:,}"
        f"  -> {'durable' if project['durable'] else 'MISSING EVENTS'}",
        f"  queue entries projected / projection lag at end:      {project['entries']:,}"
        f" / {project['projection_lag_events_at_end']}",
        f"  CPU over the window (cores of {cpu['cores']}): server {cpu['server_cores']}, postgres"
        f" {cpu['postgres_cores']}, load generator {cpu['load_generator_cores']},"
        f" machine busy {cpu['machine_busy_fraction']:.0%}",
        f"  joins per second of the window: {load.per_second}" if load.per_second else "",
        f"  load generator: {load.generator}",
        f"  command: {command_line()}  (code {code_version()})",
    ]
    if load.error_samples:
        lines.append(f"  first error answers: {load.error_samples}")
    print("\n".join(line for line in lines if line), flush=True)
    return {
        "benchmark": "commands.durable_joins_one_queue",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "code": code_version(),
        "seconds": args.seconds,
        "raw_tx_per_s": round(baseline.tps, 1),
        "raw_mode": baseline.mode,
        "baseline_runs": runs,
        "joins_per_s": round(load.rate, 1),
        "ratio": round(ratio, 4),
        "target_ratio": TARGET_RATIO,
        "p50_ms": round(load.p50_ms, 2),
        "p99_ms": round(load.p99_ms, 2),
        "max_ms": round(load.max_ms, 2),
        "joins_2xx": load.ok,
        "created_201": load.created,
        "errors": load.error_count,
        "error_kinds": load.errors,
        "user_joined_events": project["events"],
        "durable": project["durable"],
        "entries_projected": project["entries"],
        "clients": load.clients,
        "load_generator": load.generator,
        "cpu": cpu,
        "per_second": load.per_second,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    schema, secret = f"bench_{secrets.token_hex(6)}", secrets.token_urlsafe(48)
    workdir = Path(tempfile.mkdtemp(prefix="lineup-bench-"))
    server: Server | None = None
    print(f"schema {schema} in {args.database_url}", flush=True)
    try:
        pgbaseline.create_scratch_table(args.database_url, schema)
        baseline, runs = run_baseline(args, schema)
        pgbaseline.drop_scratch_table(args.database_url, schema)
        port = args.port or free_port(HOST)
        os.environ["LINEUP_WORKERS"] = str(args.workers)  # Server.start passes the environment on
        print(f"server: lineup serve on {HOST}:{port} with {args.workers} worker(s) ...", flush=True)
        started = time.monotonic()
        server = Server.start(
            database_url=args.database_url, schema=schema, secret=secret, host=HOST, port=port, workdir=workdir
        )
        print(f"  healthy after {time.monotonic() - started:.1f} s", flush=True)
        project = measure_project(args, server, secret, workdir)
        code = server.stop()
        if code not in (0, None, -signal.SIGTERM):  # uvicorn re-raises SIGTERM after a graceful shutdown
            print(f"server exited with {code}:\n{server.log_tail()}", flush=True)
        project["events"], project["entries"] = count_joined(args.database_url, schema)
        project["durable"] = project["events"] >= project["load"].ok
        summary = report(args, baseline, runs, project)
        print(json.dumps(summary), flush=True)
        return 0 if project["durable"] else 1
    except Exception:
        if server is not None:
            print(f"server log (tail):\n{server.log_tail()}", file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.stop()
        with contextlib.suppress(psycopg.Error):
            pgbaseline.drop_scratch_table(args.database_url, schema)
        with contextlib.suppress(psycopg.Error):
            drop_schema(args.database_url, schema)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
