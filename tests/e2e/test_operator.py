"""The operator commands against a real database: cleanup, status, events, replay, verify, rebuild."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from click.testing import CliRunner

from adapters.embedded import EmbeddedPostgres
from adapters.postgres.database import Database
from domain.commands import Caller, CallNext, CompleteEntry, JoinQueue, OpenQueue
from domain.queue import queue_id_for
from domain.queues import Queues
from entrypoints.bootstrap import event_store
from entrypoints.cli import cli
from entrypoints.settings import Settings
from tests.e2e.conftest import LineupServer

LINEUP = Path(sys.executable).parent / "lineup"


def run(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LINEUP_", "STRIPE_"))}
    return subprocess.run(
        [str(LINEUP), *args], env={**clean, **env}, capture_output=True, text=True, timeout=timeout, check=False
    )


def database_env(database_url: str, schema: str) -> dict[str, str]:
    return {"LINEUP_DATABASE_URL": database_url, "LINEUP_DATABASE_SCHEMA": schema}


def migrated(database_url: str, schema: str) -> dict[str, str]:
    env = database_env(database_url, schema)
    done = run("migrate", env=env)
    assert done.returncode == 0, done.stderr
    return env


def test_cleanup_removes_expired_notifications_and_old_changes(database_url: str, schema: str) -> None:
    env = migrated(database_url, schema)
    with psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema}") as conn:
        conn.execute(
            "INSERT INTO notifications (notification_id, user_id, type, data, created_at, expires_at) VALUES"
            " ('n1', 'u', 't', '{}', 1, 2), ('n2', 'u', 't', '{}', 1, 3), ('n3', 'u', 't', '{}', 1, 9e15)"
        )
        conn.execute(
            "INSERT INTO change_feed (cursor, query, args, key, op, row, recorded_at) VALUES"
            " (-2, 'q', 'a', 'k', 'remove', NULL, now() - interval '25 hours'),"
            " (-1, 'q', 'a', 'k', 'remove', NULL, now() - interval '1 hour')"
        )
    done = run("cleanup", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "removed 2 expired notifications, 1 changes older than 24 h"
    with psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema}") as conn:
        left = conn.execute("SELECT notification_id FROM notifications").fetchall()
        assert left == [("n3",)]
    again = run("cleanup", env=env)
    assert again.stdout.strip() == "removed 0 expired notifications, 0 changes older than 24 h"


def test_cleanup_on_an_unmigrated_schema_exits_2_with_one_line(database_url: str, schema: str) -> None:
    done = run("cleanup", env=database_env(database_url, schema))
    assert done.returncode == 2
    assert "lineup migrate" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# --- status, events, replay --------------------------------------------------------------------

OWNER = Caller("owner")
KNOWN = ["queues", "notifications", "stripe"]


def event_store_of(database_url: str, schema: str) -> Queues:
    return event_store(Settings(database_url=database_url, database_schema=schema), Database(database_url, schema))


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def stored(database_url: str, schema: str) -> list[tuple[int, str, int, str]]:
    """(position, aggregate id, version, topic) of every stored event, in log order."""
    with psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema}") as conn:
        rows = conn.execute(
            "SELECT notification_id, originator_id::text, originator_version, topic FROM queues_events"
            " ORDER BY notification_id"
        ).fetchall()
    return [(int(p), str(a), int(v), str(t)) for p, a, v, t in rows]


def table_counts(database_url: str, schema: str) -> dict[str, int]:
    """Rows per table of the schema, and the change feed's head."""
    with psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema}") as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for (t,) in tables}  # type: ignore[index]
        counts["change_feed_head.cursor"] = conn.execute("SELECT cursor FROM change_feed_head").fetchone()[0]  # type: ignore[index]
    return counts


@pytest.fixture(scope="module")
def served(database_url: str) -> Iterator[tuple[dict[str, str], str, str]]:
    """A migrated schema holding one served queue (positions 1-8, nothing projected), for commands
    that only read: (environment, database URL, schema)."""
    schema = f"op_{uuid.uuid4().hex[:16]}"
    env = migrated(database_url, schema)
    app = event_store_of(database_url, schema)
    try:
        a_served_queue(app, "launch")
    finally:
        app.close()
    yield env, database_url, schema
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def a_served_queue(app: Queues, event_id: str) -> None:
    """Positions 1-8: opened, 3 joined (one is told it is next), called, completed (+ next in line)."""
    entries = [str(uuid.uuid4()) for _ in range(3)]
    app.execute([OpenQueue(event_id, OWNER, "Q", capacity=10, service_seconds=60)], 1_000)
    app.execute([JoinQueue(event_id, Caller(f"u{i}"), entry) for i, entry in enumerate(entries)], 2_000)
    app.execute([CallNext(event_id, OWNER)], 3_000)
    app.execute([CompleteEntry(event_id, OWNER, entries[0])], 63_000)


def test_status_json_and_text_before_any_projector_ran(served: tuple[dict[str, str], str, str]) -> None:
    env, database_url, schema = served
    head = stored(database_url, schema)[-1][0]
    done = run("status", "--json", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["head"] == head
    assert [(p["name"], p["kind"]) for p in report["projections"]] == [
        *((name, "projection") for name in KNOWN),
        ("stripe-process", "processor"),
    ]
    for projection in report["projections"]:
        assert (projection["position"], projection["lag_events"]) == (0, head)
        assert projection["lag_seconds"] > 0  # the oldest unprocessed event was written before the command ran
    assert report["change_feed"] == {"head": 0, "oldest": None}
    assert report["projector"] is None
    text = run("status", env=env)  # not a terminal: plain lines
    assert text.returncode == 0, text.stderr
    assert f"log head: {head}" in text.stdout
    assert f"projection queues: position 0, lag {head} events" in text.stdout
    assert "projector lock: none" in text.stdout
    table = on_a_terminal("status", env=env)
    assert "┏━" in table  # rich's table
    assert "│ queues " in table
    assert "log head 8" in table
    assert "projector lock: none" in table


def on_a_terminal(*args: str, env: dict[str, str]) -> str:
    """What `lineup ARGS` prints when its stdout is a terminal (a pseudo-terminal here)."""
    main, child = pty.openpty()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LINEUP_", "STRIPE_"))}
    process = subprocess.Popen([str(LINEUP), *args], env={**clean, **env, "COLUMNS": "100"}, stdout=child)
    os.close(child)
    out = bytearray()
    with contextlib.suppress(OSError):  # EIO once the child has exited and closed its end
        while chunk := os.read(main, 4096):
            out += chunk
    os.close(main)
    assert process.wait(30) == 0
    return out.decode(errors="replace")


def test_status_beside_lineup_serve_names_the_projecting_process(server: LineupServer, client: httpx.Client) -> None:
    owner = server.headers("alice")
    assert client.post("/events/status-1/queue", headers=owner, json={"name": "S"}).status_code == 201
    assert client.post("/events/status-1/queue/join", headers=server.headers("bob")).status_code == 201
    env = server.env()
    deadline = time.monotonic() + 10
    while True:  # the projector catches up within moments
        done = run("status", "--json", env=env)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        lags = [p["lag_events"] for p in report["projections"] if p["kind"] == "projection"]
        if (report["projector"] is not None and not any(lags)) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert report["head"] >= 3
    assert lags == [0, 0, 0]
    holder = report["projector"]
    assert server.process is not None
    projecting = int(holder["application_name"].rpartition(":")[2])  # by its pid: serve's projector process
    status = Path(f"/proc/{projecting}/status").read_text()
    assert f"PPid:\t{server.process.pid}\n" in status
    with psycopg.connect(str(server.settings.database_url), autocommit=True) as conn:
        backend = conn.execute(
            "SELECT application_name, host(client_addr) FROM pg_stat_activity WHERE pid = %s", (holder["pid"],)
        )
        # client_addr: 127.0.0.1 over TCP, None over the embedded server's Unix socket
        assert backend.fetchone() == (holder["application_name"], holder["client_addr"])
    assert report["change_feed"]["head"] >= 1
    assert 1 <= report["change_feed"]["oldest"] <= report["change_feed"]["head"]


def test_events_prints_the_log_as_json_lines(served: tuple[dict[str, str], str, str]) -> None:
    env, database_url, schema = served
    rows = stored(database_url, schema)
    done = run("events", env=env)
    assert done.returncode == 0, done.stderr
    events = json_lines(done.stdout)
    assert [(e["position"], e["aggregate_id"], e["version"], e["topic"]) for e in events] == rows
    assert {e["aggregate_type"] for e in events} == {"Queue"}
    assert events[0]["state"]["name"] == "Q"
    assert datetime.fromisoformat(events[0]["timestamp"]).tzinfo is not None
    joined = [e for e in events if e["topic"].endswith("Queue.UserJoined")]
    assert [e["state"]["user_id"] for e in joined] == ["u0", "u1", "u2"]
    assert [e["state"]["at"] for e in joined] == [2_000] * 3
    page = json_lines(run("events", "--after", str(rows[1][0]), "--limit", "3", env=env).stdout)
    assert [e["position"] for e in page] == [r[0] for r in rows[2:5]]
    assert run("events", "--after", str(rows[-1][0]), env=env).stdout == ""


def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


class Writers:
    """Threads that commit events until stopped: joins through lineup serve's HTTP API, one per
    queue, and queues opened through the event store directly (another process's writer)."""

    def __init__(self, server: LineupServer, events: list[str]) -> None:
        self.server, self.app = (
            server,
            event_store_of(str(server.settings.database_url), server.settings.database_schema),
        )
        self.stop, self.lock, self.count = threading.Event(), threading.Lock(), 0
        self.threads = [threading.Thread(target=self.http_joins, args=(event,)) for event in events]
        self.threads.append(threading.Thread(target=self.direct_writes))

    def wrote(self) -> None:
        with self.lock:
            self.count += 1

    def http_joins(self, event: str) -> None:
        with self.server.client() as http:
            for i in itertools.count():
                if self.stop.is_set():
                    return
                response = http.post(f"/events/{event}/queue/join", headers=self.server.headers(f"{event}-{i}"))
                assert response.status_code == 201
                self.wrote()

    def direct_writes(self) -> None:
        while not self.stop.is_set():
            self.app.execute([OpenQueue(f"direct-{uuid.uuid4().hex}", OWNER, "d")], 1_000)
            self.wrote()
            time.sleep(0.02)

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        self.app.close()


def test_events_follow_prints_every_event_once_in_order_while_commands_run(
    server: LineupServer, client: httpx.Client
) -> None:
    """Writers in lineup serve (HTTP) and in this process (the event store directly) keep committing
    while the follower starts and for a while after it printed its first line: what it prints must
    be the whole log, each event once, in log order (the backlog, the seam and the live tail)."""
    events = [f"follow-{i}" for i in range(3)]
    for event in events:
        opened = client.post(f"/events/{event}/queue", headers=server.headers("owner"), json={"name": event})
        assert opened.status_code == 201
    lines: list[dict[str, Any]] = []
    with Writers(server, events) as writers:
        wait_for(lambda: writers.count >= 10, 10)
        follower = subprocess.Popen(
            [str(LINEUP), "events", "--follow"],
            env={**{k: v for k, v in os.environ.items() if not k.startswith("LINEUP_")}, **server.env()},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        stdout = follower.stdout
        reader = threading.Thread(target=lambda: lines.extend(json.loads(line) for line in stdout or []))
        reader.start()
        wait_for(lambda: bool(lines), 15)  # it runs: LISTEN is on, the backlog is being printed
        at_first_line = writers.count
        wait_for(lambda: writers.count >= at_first_line + 60, 20)  # these can only come through the live tail
    assert writers.count >= at_first_line + 60
    rows = stored(str(server.settings.database_url), server.settings.database_schema)
    wait_for(lambda: bool(lines) and lines[-1]["position"] >= rows[-1][0], 10)
    time.sleep(0.3)  # anything printed twice or beyond the head would show by now
    follower.send_signal(signal.SIGINT)
    code = follower.wait(10)
    reader.join(10)
    assert code == 0
    assert (follower.stderr.read() if follower.stderr else "") == ""  # no traceback
    assert [(e["position"], e["aggregate_id"], e["version"], e["topic"]) for e in lines] == rows


def test_replay_prints_the_writer_calls_and_writes_nothing(served: tuple[dict[str, str], str, str]) -> None:
    env, database_url, schema = served
    queue_id = str(queue_id_for("launch"))
    before = table_counts(database_url, schema)
    done = run("replay", "queues", env=env)
    assert done.returncode == 0, done.stderr
    calls = json_lines(done.stdout)
    assert [(c["position"], c["call"]) for c in calls] == [
        (1, "queue_opened"),
        (2, "entry_joined"),
        (4, "entry_joined"),
        (5, "entry_joined"),
        (6, "entry_called"),
        (8, "entry_finished"),
        (8, "average_changed"),
    ]  # 3 and 7 are Queue.NextInLine: nothing for the queues read model
    assert calls[0]["arguments"] == {
        "queue_id": queue_id,
        "event_id": "launch",
        "owner_id": "owner",
        "name": "Q",
        "capacity": 10,
        "service_ms": 60_000,
        "requires_payment": False,
        "at": 1_000,
    }
    assert [c["arguments"]["seq"] for c in calls[1:4]] == [2, 4, 5]  # the event's version in its queue
    assert calls[5]["arguments"] == {
        "queue_id": queue_id,
        "entry_id": calls[1]["arguments"]["entry_id"],
        "status": "completed",
        "reason": None,
        "at": 63_000,
    }
    assert calls[6]["arguments"]["average_ms"] == (60_000 * 4 + 60_000 + 2) // 5
    ranged = json_lines(run("replay", "notifications", "--from", "4", "--to", "7", env=env).stdout)
    assert [(c["position"], c["call"], c["arguments"]["kind"]) for c in ranged] == [
        (6, "notification_created", "queue.called"),
        (7, "notification_created", "queue.next"),
    ]
    after = table_counts(database_url, schema)
    assert after == before
    assert after["queue_summary"] == after["queue_entries"] == after["notifications"] == 0


def test_replay_of_an_unknown_projection_exits_2_naming_the_known_ones(database_url: str, schema: str) -> None:
    env = database_env(database_url, schema)  # checked before the database is opened
    done = run("replay", "nope", env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip() == f"lineup: unknown projection 'nope'; known: {', '.join(KNOWN)}"
    backwards = run("replay", "queues", "--from", "5", "--to", "2", env=env)
    assert backwards.returncode == 2
    assert backwards.stderr.strip() == "lineup: --to 2 is before --from 5"


def test_commands_on_an_unmigrated_schema_exit_2_with_one_line(database_url: str, schema: str) -> None:
    for command in (["status"], ["events", "--follow"]):  # every command reads the log the same way
        done = run(*command, env=database_env(database_url, schema))
        assert done.returncode == 2, command
        assert done.stderr.strip().splitlines() == [done.stderr.strip()], command
        assert "lineup migrate" in done.stderr, command


def test_help_says_in_one_line_what_each_command_does() -> None:
    runner = CliRunner()
    listing = runner.invoke(cli, ["--help"], terminal_width=80).output
    for name in ("serve", "migrate", "token", "status", "events", "replay", "cleanup"):
        line = next(line for line in listing.splitlines() if line.strip().startswith(name + " "))
        assert not line.endswith("..."), line
        assert runner.invoke(cli, [name, "--help"]).exit_code == 0


def test_status_attaches_to_the_embedded_server_of_the_data_dir() -> None:
    """With no LINEUP_DATABASE_URL, a command uses the data dir's running server and leaves it up."""
    data_dir = Path(tempfile.mkdtemp(prefix="lu", dir="/tmp"))  # short: the socket lives in it
    server = EmbeddedPostgres(data_dir)
    try:
        url = server.start()
        env = {"LINEUP_DATA_DIR": str(data_dir)}
        assert run("migrate", env=env).returncode == 0
        done = run("status", "--json", env=env)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["head"] == 0
        assert report["projector"] is None
        with psycopg.connect(url, autocommit=True) as conn:  # still running, with the tables migrate made
            assert conn.execute("SELECT to_regclass('public.queues_events') IS NOT NULL").fetchone() == (True,)
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def test_bad_usage_exits_2_with_one_line() -> None:
    runner = CliRunner()
    for args, says in [
        (["events", "--after", "x"], "'--after'"),
        (["events", "--limit", "0"], "'--limit'"),
        (["replay"], "Missing argument 'PROJECTION'"),
        (["status", "--bogus"], "--bogus"),
        (["nope"], "No such command 'nope'"),
    ]:
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, args
        assert result.stdout == "", args
        assert result.stderr.count("\n") == 1, result.stderr
        assert result.stderr.startswith("lineup: "), result.stderr
        assert says in result.stderr, args
