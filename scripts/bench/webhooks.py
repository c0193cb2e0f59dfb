"""Signed Stripe webhooks through the real HTTP server, measured beside the raw PostgreSQL ceiling.

    .venv/bin/python scripts/bench/webhooks.py --seconds 10               # throughput: senders unpaced
    .venv/bin/python scripts/bench/webhooks.py --seconds 10 --rate 1000   # latency at a paced 1,000/s

1. Baseline: autocommit single-row INSERTs (a ~330-byte jsonb row, bigserial PK) per second from
   --baseline-clients psycopg connections (default 32), from threads and from processes; the higher counts.
2. Project: `lineup serve` on a fresh schema of the same database with STRIPE_WEBHOOK_SECRET set. For
   --seconds, --senders concurrent keep-alive HTTP/1.1 connections (in --procs processes, asyncio) POST
   signed events to /api/webhooks/stripe-connect, each as soon as the previous answer arrived, or, with
   --rate, on a fixed schedule (latency then counts from each send's due time). Closed-loop senders
   measure the most the server accepts; their latency is 32 / throughput by construction, so the p99
   target is read at a paced rate. Bodies are
   the fixture events (account.updated, payment_intent.succeeded, payment_intent.payment_failed) with
   fresh ids, `created` and a `lineup_user_id`; a --duplicates fraction of the sends repeats an event the
   same connection already sent (re-signed with a fresh timestamp, as Stripe does on a retry).
   Before it, unless --no-floor, the same senders drive the HTTP floor (scripts/bench/httpfloor.py): a
   bare ASGI app on uvicorn that reads each body and answers 200, nothing else. Its p99 is what the
   HTTP stack, the senders and the shared cores cost alone; Lineup's p99 is printed beside it.
3. Prints accepted/s (200 answers, new and duplicate), p50/p99 latency, the ratio to the baseline, how
   long the server took afterwards to finish processing (every projection's lag back to 0), and checks
   in SQL that the log holds exactly one received Stripe event per distinct id that was answered 200.
   The scratch table, the schema and the server are removed at the end. A JSON line comes last.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import hmac
import json
import multiprocessing as mp
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pgbaseline
import psycopg
from commands import code_version, command_line, drop_schema, run_baseline
from httpfloor import Floor
from httpload import _read_response, percentile
from server import Server, free_port, machine_busy, postgres_cpu, tree_cpu

HOST = "127.0.0.1"
PATH = "/api/webhooks/stripe-connect"
TARGET_RATE = 1000.0
KEPT = 0.99  # a paced run kept its schedule when it answered at least this share of the paced rate
TARGET_P99_MS = 20.0
GRACE_SECONDS = 30.0
DRAIN_TIMEOUT = 120.0
FIXTURES = Path(os.environ.get("LINEUP_STRIPE_FIXTURES", "/work/shared/stripe-fixtures"))
# (fixture file stem, share of new events)
MIX = (
    ("account.updated.djstripe-express-onboarded", 0.10),
    ("account.updated.djstripe-standard-incomplete", 0.10),
    ("payment_intent.succeeded.djstripe-destination-constructed", 0.50),
    ("payment_intent.payment_failed.stripe-java-constructed", 0.30),
)
CREATED = 1_999_999_999  # a placeholder for the top-level `created` in the templates
USERS_PER_PROCESS = 500


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    pgbaseline.add_arguments(parser, clients=32)
    parser.add_argument("--senders", type=int, default=32, help="concurrent webhook senders (connections)")
    parser.add_argument("--procs", type=int, default=4, help="processes the senders are spread over")
    parser.add_argument("--duplicates", type=float, default=0.3, help="fraction of sends that repeat an event")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="paced sends/s over all senders (0: each sender sends as soon as its previous answer arrived)",
    )
    parser.add_argument("--workers", type=int, default=1, help="LINEUP_WORKERS for the server")
    parser.add_argument(
        "--floor",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="first drive a bare ASGI app on uvicorn with the same senders (the HTTP floor)",
    )
    parser.add_argument("--port", type=int, default=0, help="port for `lineup serve` (default: a free one)")
    parser.add_argument("--fixtures", type=Path, default=FIXTURES, help="directory of the Stripe fixture events")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.senders < 1 or args.baseline_clients < 1 or not 0 <= args.duplicates < 1:
        parser.error("--seconds, --senders, --baseline-clients must be positive; 0 <= --duplicates < 1")
    args.procs = max(1, min(args.procs, args.senders))
    return args


# Bodies -----------------------------------------------------------------------------------------------


def templates(directory: Path) -> list[tuple[str, float]]:
    """Each fixture as compact JSON with placeholders for the event id, object id, user and `created`."""
    out = []
    for stem, share in MIX:
        event = json.loads((directory / f"{stem}.json").read_text())
        event["id"], event["created"] = "__EVT__", CREATED
        obj = event["data"]["object"]
        obj["id"], obj["metadata"] = "__OBJ__", {"lineup_user_id": "__USER__"}
        if "account" in event:
            event["account"] = "__OBJ__"
        text = json.dumps(event, separators=(",", ":"))
        assert text.count(str(CREATED)) == 1, stem
        out.append((text, share))
    return out


def sign(body: bytes, secret: bytes, timestamp: int) -> str:
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass
class Maker:
    """New events for one sender process: unique ids, its own users and accounts, increasing `created`."""

    index: int
    templates: list[tuple[str, float]]
    rng: random.Random
    serial: int = 0

    def new(self) -> tuple[str, bytes]:
        self.serial += 1
        text = self.rng.choices([t for t, _ in self.templates], weights=[w for _, w in self.templates])[0]
        user = self.rng.randrange(USERS_PER_PROCESS)
        event_id = f"evt_bench{self.index}x{self.serial}"
        obj = (
            f"acct_bench{self.index}x{user}" if '"object":"account"' in text else f"pi_bench{self.index}x{self.serial}"
        )
        body = (
            text.replace("__EVT__", event_id)
            .replace("__OBJ__", obj)
            .replace("__USER__", f"bench-{self.index}-{user}")
            .replace(str(CREATED), str(int(time.time())))
        )
        return event_id, body.encode()


# Senders ------------------------------------------------------------------------------------------------


@dataclass
class Stats:
    start: float
    new: int = 0
    duplicate: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    latencies: list[float] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    accepted_ids: set[str] = field(default_factory=set)
    sent_duplicates: int = 0
    last: float = 0.0


async def _sender(job: dict[str, Any], maker: Maker, deadline: float, stats: Stats, slot: int) -> None:
    """One keep-alive connection. Paced (`rate`): the k-th send is due at start + (k + slot/N) x N/rate
    and its latency counts from that due time, so a late answer also charges the sends it delayed
    (no coordinated omission). Unpaced: each send goes as soon as the previous answer arrived."""
    host, port, secret = job["host"], job["port"], job["secret"].encode()
    reader, writer = await asyncio.open_connection(host, port)
    sent: list[tuple[str, bytes]] = []
    rng = random.Random(maker.rng.random())
    head = f"POST {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
    interval = job["total_connections"] / job["rate"] if job["rate"] else 0.0
    due = stats.start + interval * slot / job["total_connections"]
    while time.monotonic() < deadline:
        repeat = bool(sent) and rng.random() < job["duplicates"]
        event_id, body = rng.choice(sent) if repeat else maker.new()
        if interval:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        request = (
            f"{head}Content-Length: {len(body)}\r\nStripe-Signature: {sign(body, secret, int(time.time()))}\r\n\r\n"
        ).encode() + body
        started = time.perf_counter()
        if interval:
            started -= max(0.0, time.monotonic() - due)  # count from when the send was due
            due += interval
        try:
            writer.write(request)
            status, answer, keep_alive = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as error:
            stats.errors[type(error).__name__] += 1
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
            continue
        stats.latencies.append(time.perf_counter() - started)
        stats.statuses[status] += 1
        stats.last = max(stats.last, time.monotonic())
        stats.sent_duplicates += repeat
        if status == 200:
            if b'"duplicate":true' in answer:
                stats.duplicate += 1
            else:
                stats.new += 1
            stats.accepted_ids.add(event_id)
            if not repeat:
                sent.append((event_id, body))
        elif len(stats.samples) < 3:
            stats.samples.append(f"{status} {answer[:200].decode(errors='replace')}")
        if not keep_alive:
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
    writer.close()


async def _drive(job: dict[str, Any], ready: Any, go: Any, start: Any) -> dict[str, Any]:
    maker = Maker(job["index"], job["templates"], random.Random(job["index"]))
    ready.put(job["index"])
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    await asyncio.sleep(max(0.0, start.value - time.monotonic()))
    stats = Stats(start=start.value)
    cpu = time.process_time()
    deadline = start.value + job["seconds"]
    tasks = [
        asyncio.ensure_future(_sender(job, maker, deadline, stats, job["first_slot"] + i))
        for i in range(job["connections"])
    ]
    _, pending = await asyncio.wait(tasks, timeout=job["seconds"] + GRACE_SECONDS)
    for task in pending:
        stats.errors["timeout"] += 1
        task.cancel()
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            stats.errors[type(task.exception()).__name__] += 1
    return {
        "new": stats.new,
        "duplicate": stats.duplicate,
        "statuses": dict(stats.statuses),
        "errors": dict(stats.errors),
        "latencies": stats.latencies,
        "samples": stats.samples,
        "accepted_ids": sorted(stats.accepted_ids),
        "sent_duplicates": stats.sent_duplicates,
        "last": stats.last,
        "cpu": time.process_time() - cpu,
    }


def _process(job: dict[str, Any], ready: Any, go: Any, start: Any, out: Any) -> None:
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        out.put(runner.run(_drive(job, ready, go, start)))


@dataclass
class Load:
    senders: int
    procs: int
    seconds: float
    new: int
    duplicate: int
    sent_duplicates: int
    distinct_accepted: int
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_seconds: float
    samples: list[str]

    @property
    def accepted(self) -> int:
        return self.new + self.duplicate

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0


def run_senders(args: argparse.Namespace, port: int, secret: str) -> Load:
    ctx = mp.get_context("spawn")
    ready, out, go, start = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    shared = {
        "host": HOST,
        "port": port,
        "secret": secret,
        "seconds": args.seconds,
        "duplicates": args.duplicates,
        "templates": templates(args.fixtures),
        "rate": args.rate,
        "total_connections": args.senders,
    }
    counts = [args.senders // args.procs + (i < args.senders % args.procs) for i in range(args.procs)]
    jobs = [
        {**shared, "index": i, "connections": count, "first_slot": sum(counts[:i])} for i, count in enumerate(counts)
    ]
    workers = [ctx.Process(target=_process, args=(job, ready, go, start, out)) for job in jobs]
    for worker in workers:
        worker.start()
    for _ in workers:
        ready.get(timeout=120)
    start.value = time.monotonic() + 0.2
    go.set()
    parts = [out.get(timeout=args.seconds + GRACE_SECONDS + 60) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    latencies = sorted(x for p in parts for x in p["latencies"])
    errors: collections.Counter[str] = collections.Counter()
    for part in parts:
        errors.update(part["errors"])
        for status, count in part["statuses"].items():
            if int(status) != 200:
                errors[f"HTTP {status}"] += count
    last = max((p["last"] for p in parts), default=start.value + args.seconds)
    return Load(
        senders=args.senders,
        procs=args.procs,
        seconds=max(args.seconds, last - start.value),
        new=sum(p["new"] for p in parts),
        duplicate=sum(p["duplicate"] for p in parts),
        sent_duplicates=sum(p["sent_duplicates"] for p in parts),
        distinct_accepted=len({i for p in parts for i in p["accepted_ids"]}),
        errors=dict(errors),
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        max_ms=(latencies[-1] * 1000) if latencies else 0.0,
        client_cpu_seconds=sum(p["cpu"] for p in parts),
        samples=[s for p in parts for s in p["samples"]][:5],
    )


# The run ---------------------------------------------------------------------------------------------------


def wait_drained(server: Server, timeout: float = DRAIN_TIMEOUT) -> float | None:
    """Seconds until every projection's lag is 0 (None if it was not within `timeout`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        lags = [v for k, v in server.metrics().items() if k.startswith("lineup_projection_lag_events")]
        if lags and not any(lags):
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def recorded_stripe_events(url: str, schema: str) -> tuple[int, int]:
    """(received Stripe events in the log, distinct Stripe ids among them), over every stored-events table."""
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.columns WHERE table_schema = %s AND column_name = 'topic'",
                (schema,),
            ).fetchall()
        ]
        total, ids = 0, set()
        for table in tables:
            rows = conn.execute(
                f'SELECT state FROM "{schema}"."{table}" WHERE topic LIKE %s', ("%StripeEvent.Received%",)
            ).fetchall()
            total += len(rows)
            for (state,) in rows:
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    ids.add(json.loads(bytes(state))["stripe_id"])
    return total, len(ids)


def report(
    args: argparse.Namespace,
    baseline: pgbaseline.BaselineResult,
    runs: list[Any],
    project: dict[str, Any],
    floor: dict[str, Any] | None,
) -> dict[str, Any]:
    load: Load = project["load"]
    ratio = load.rate / baseline.tps if baseline.tps else 0.0
    cpu = project["cpu"]
    # paced at >= the target, the run meets it when the server kept the schedule (the count is over
    # the whole window, the last answers' arrival included, so a kept schedule reads e.g. 999.4/s)
    kept = bool(args.rate) and load.rate >= KEPT * args.rate
    rate_met = load.rate >= TARGET_RATE or (kept and args.rate >= TARGET_RATE)
    p99_met = load.p99_ms <= TARGET_P99_MS
    drained = project["drained_s"]
    lines = [
        "",
        "Webhooks: signed Stripe events, 30 % duplicates"
        if args.duplicates == 0.3
        else "Webhooks: signed Stripe events",
        f"  raw PG tx/s ({baseline.clients} {baseline.mode}, 1-row autocommit INSERT): {baseline.tps:,.0f}",
        *(f"    {r['mode']}: {r['tps']:,.0f} tx/s" for r in runs),
        f"  accepted/s ({load.senders} senders, 200 only, "
        + (f"paced at {args.rate:,.0f}/s" if args.rate else "unpaced")
        + f"): {load.rate:,.0f}"
        f"  ({load.accepted:,} in {load.seconds:.2f} s; new {load.new:,}, duplicate {load.duplicate:,};"
        f" repeats sent {load.sent_duplicates:,})  (target >= {TARGET_RATE:,.0f}: {'met' if rate_met else 'NOT met'}"
        + (", the schedule kept)" if kept else ")"),
        f"  latency p50 / p99 / max{' (from due times)' if args.rate else ''}:"
        f" {load.p50_ms:.1f} / {load.p99_ms:.1f}"
        f" / {load.max_ms:.1f} ms  (p99 target <= {TARGET_P99_MS:g} ms: {'met' if p99_met else 'NOT met'})",
        f"  errors:                                                  {sum(load.errors.values())} {load.errors or ''}",
        *(
            [
                f"  HTTP floor (bare ASGI app on uvicorn, same senders): {floor['load'].rate:,.0f}/s, p50 / p99"
                f" {floor['load'].p50_ms:.1f} / {floor['load'].p99_ms:.1f} ms, floor server"
                f" {floor['server_cores']} cores; Lineup p99 / floor p99: {load.p99_ms / floor['load'].p99_ms:.2f}"
            ]
            if floor and floor["load"].p99_ms
            else []
        ),
        f"  ratio accepted/s / raw tx/s:                             {ratio:.3f}",
        f"  received Stripe events in the log / distinct ids accepted: {project['recorded']:,}"
        f" ({project['recorded_ids']:,} distinct) / {load.distinct_accepted:,}"
        f"  -> {'exactly once' if project['exactly_once'] else 'MISMATCH'}",
        "  processing drained after the load:                       "
        + (f"{drained:.1f} s" if drained is not None else f"NOT within {DRAIN_TIMEOUT:.0f} s")
        + f" (server log: {project['logged_errors']} errors)",
        f"  CPU over the window (cores of {cpu['cores']}): server {cpu['server_cores']}, postgres"
        f" {cpu['postgres_cores']}, senders {cpu['sender_cores']}, machine busy {cpu['machine_busy_fraction']:.0%}",
        f"  senders: {load.procs} processes, {load.senders} keep-alive HTTP/1.1 connections, asyncio raw HTTP",
        f"  command: {command_line()}  (code {code_version()})",
    ]
    if load.samples:
        lines.append(f"  first error answers: {load.samples}")
    print("\n".join(lines), flush=True)
    return {
        "benchmark": "webhooks.signed_stripe_events",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "code": code_version(),
        "seconds": args.seconds,
        "paced_rate": args.rate or None,
        "workers": args.workers,
        "raw_tx_per_s": round(baseline.tps, 1),
        "raw_mode": baseline.mode,
        "baseline_runs": runs,
        "accepted_per_s": round(load.rate, 1),
        "schedule_kept": kept if args.rate else None,
        "ratio": round(ratio, 4),
        "target_rate": TARGET_RATE,
        "target_p99_ms": TARGET_P99_MS,
        "p50_ms": round(load.p50_ms, 2),
        "p99_ms": round(load.p99_ms, 2),
        "max_ms": round(load.max_ms, 2),
        "accepted": load.accepted,
        "new": load.new,
        "duplicate": load.duplicate,
        "repeats_sent": load.sent_duplicates,
        "errors": load.errors,
        "recorded": project["recorded"],
        "recorded_distinct": project["recorded_ids"],
        "distinct_accepted": load.distinct_accepted,
        "exactly_once": project["exactly_once"],
        "drained_s": None if drained is None else round(drained, 2),
        "logged_errors": project["logged_errors"],
        "senders": load.senders,
        "cpu": cpu,
        "floor": None
        if floor is None
        else {
            "accepted_per_s": round(floor["load"].rate, 1),
            "p50_ms": round(floor["load"].p50_ms, 2),
            "p99_ms": round(floor["load"].p99_ms, 2),
            "errors": floor["load"].errors,
            "server_cores": floor["server_cores"],
        },
    }


def measure(args: argparse.Namespace, server: Server, secret: str) -> dict[str, Any]:
    before = (tree_cpu(server.process.pid), postgres_cpu(), *machine_busy())
    load = run_senders(args, server.port, secret)
    after = (tree_cpu(server.process.pid), postgres_cpu(), *machine_busy())
    window = load.seconds
    cpu = {
        "server_cores": round((after[0] - before[0]) / window, 2),
        "postgres_cores": round((after[1] - before[1]) / window, 2),
        "sender_cores": round(load.client_cpu_seconds / window, 2),
        "machine_busy_fraction": round((after[2] - before[2]) / max(1e-9, after[3] - before[3]), 2),
        "cores": os.cpu_count(),
    }
    print("load done; waiting for processing to drain ...", flush=True)
    return {"load": load, "cpu": cpu, "drained_s": wait_drained(server)}


def measure_floor(args: argparse.Namespace, secret: str) -> dict[str, Any]:
    print("HTTP floor: a bare ASGI app on uvicorn, the same senders ...", flush=True)
    floor = Floor.start(HOST, free_port(HOST))
    try:
        before = tree_cpu(floor.pid)
        load = run_senders(args, floor.port, secret)
        cores = round((tree_cpu(floor.pid) - before) / load.seconds, 2)
    finally:
        floor.stop()
    return {"load": load, "server_cores": cores}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    templates(args.fixtures)  # fail early without fixtures
    schema = f"bench_wh_{secrets.token_hex(6)}"
    jwt_secret, webhook_secret = secrets.token_urlsafe(48), f"whsec_{secrets.token_hex(24)}"
    workdir = Path(tempfile.mkdtemp(prefix="lineup-bench-"))
    server: Server | None = None
    print(f"schema {schema} in {args.database_url}", flush=True)
    try:
        pgbaseline.create_scratch_table(args.database_url, schema)
        baseline, runs = run_baseline(args, schema)
        pgbaseline.drop_scratch_table(args.database_url, schema)
        floor = measure_floor(args, webhook_secret) if args.floor else None
        port = args.port or free_port(HOST)
        os.environ["LINEUP_WORKERS"] = str(args.workers)  # Server.start passes the environment on
        os.environ["STRIPE_WEBHOOK_SECRET"] = webhook_secret
        print(f"server: lineup serve on {HOST}:{port} with {args.workers} worker(s) ...", flush=True)
        server = Server.start(
            database_url=args.database_url, schema=schema, secret=jwt_secret, host=HOST, port=port, workdir=workdir
        )
        project = measure(args, server, webhook_secret)
        project["logged_errors"] = len(server.logged_errors())
        if project["logged_errors"] or project["drained_s"] is None:
            print(f"server log (tail):\n{server.log_tail()}", file=sys.stderr)
        code = server.stop()
        if code not in (0, None, -signal.SIGTERM):
            print(f"server exited with {code}:\n{server.log_tail()}", flush=True)
        project["recorded"], project["recorded_ids"] = recorded_stripe_events(args.database_url, schema)
        load = project["load"]
        project["exactly_once"] = project["recorded"] == project["recorded_ids"] == load.distinct_accepted
        summary = report(args, baseline, runs, project, floor)
        print(json.dumps(summary), flush=True)
        return 0 if project["exactly_once"] else 1
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
