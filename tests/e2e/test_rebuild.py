"""`lineup rebuild` and `lineup verify` against a real database and a real `lineup serve`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from adapters.client import LiveClient
from adapters.postgres import changes
from adapters.postgres.database import Database
from tests.e2e.conftest import LineupServer

LINEUP = Path(sys.executable).parent / "lineup"


def env_of(server_settings: Any, schema: str | None = None) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LINEUP_", "STRIPE_"))}
    return {
        **clean,
        "LINEUP_DATABASE_URL": str(server_settings.database_url),
        "LINEUP_DATABASE_SCHEMA": schema or server_settings.database_schema,
        "LINEUP_NOTIFICATION_TTL": str(server_settings.notification_ttl),
        "LINEUP_DATA_DIR": str(server_settings.data_dir),
    }


def lineup(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINEUP), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def sql(server: LineupServer, statement: str, params: Any = None) -> list[dict[str, Any]]:
    settings = server.settings
    with psycopg.connect(
        str(settings.database_url),
        autocommit=True,
        row_factory=dict_row,
        options=f"-c search_path={settings.database_schema}",
    ) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def post(http: httpx.Client, server: LineupServer, path: str, user: str, body: Any = None, role: str = "user") -> Any:
    response = http.post(path, json=body, headers=server.headers(user, role=role))
    assert response.status_code in (200, 201), response.text
    return response.json()


def reads(http: httpx.Client, server: LineupServer, event_id: str, fans: list[str]) -> list[Any]:
    """Every read of the scenario, as HTTP answers it (status, body)."""
    owner = server.headers("owner")
    paths = [
        (f"/events/{event_id}/queue", owner),
        (f"/events/{event_id}/queue/summary", owner),
        *[(f"/users/{fan}/queue", server.headers(fan)) for fan in fans],
        *[(f"/users/{fan}/notifications?since=0", server.headers(fan)) for fan in fans],
    ]
    answers = []
    for path, headers in paths:
        response = http.get(path, headers=headers)
        answers.append((path, response.status_code, response.json()))
    return answers


def scenario(http: httpx.Client, server: LineupServer) -> tuple[str, list[str]]:
    """A queue with joins, a call and a completion (so notifications too), and a sent notification."""
    event_id = f"rb-{uuid.uuid4().hex[:10]}"
    fans = [f"fan-{event_id}-{i}" for i in range(4)]
    post(http, server, f"/events/{event_id}/queue", "owner", {"name": "Rebuild", "capacity": 50})
    for fan in fans:
        post(http, server, f"/events/{event_id}/queue/join", fan)
    called = post(http, server, f"/events/{event_id}/queue/call-next", "owner")
    post(http, server, f"/events/{event_id}/queue/entries/{called['entry_id']}/complete", "owner")
    post(http, server, "/notifications", "backend", {"user_id": fans[1], "type": "promo", "data": {"x": 1}}, "service")
    return event_id, fans


def settled(http: httpx.Client) -> None:
    """Wait until every projection has processed the whole log: a read waits at most 2 s for them,
    and on a busy machine they can be further behind than that."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        response = http.get("/ready")
        body = response.json()
        if response.status_code == 200 and all(p >= body["head"] for p in body["projections"].values()):
            return
        time.sleep(0.1)
    raise AssertionError(f"projections did not catch up: {body}")


def differences(done: subprocess.CompletedProcess[str]) -> set[tuple[str, str, str]]:
    return {(line["table"], line["key"], line["kind"]) for line in map(json.loads, done.stdout.splitlines())}


def test_verify_names_each_tampered_row_and_rebuild_repairs_them(server: LineupServer, client: httpx.Client) -> None:
    event_id, fans = scenario(client, server)
    settled(client)
    before = reads(client, server, event_id, fans)
    env = env_of(server.settings)
    clean = lineup("verify", "--all", env=env)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout == ""

    entry = sql(
        server, "SELECT entry_id FROM queue_entries WHERE event_id = %s AND status = 'waiting' LIMIT 1", (event_id,)
    )
    entry_id = entry[0]["entry_id"]
    sql(server, "UPDATE queue_entries SET status = 'called' WHERE entry_id = %s", (entry_id,))
    note = sql(server, "DELETE FROM notifications WHERE user_id = %s RETURNING notification_id", (fans[1],))
    sql(
        server,
        "INSERT INTO payments (payment_id, user_id, amount, currency, status, updated_at)"
        " VALUES ('pi_forged', %s, 100, 'eur', 'succeeded', 1)",
        (fans[0],),
    )
    tampered = lineup("verify", "--all", env=env)
    assert tampered.returncode == 1, tampered.stderr
    found = differences(tampered)
    assert ("queue_entries", entry_id, "different") in found
    assert {("notifications", row["notification_id"], "missing") for row in note} <= found
    assert ("payments", "pi_forged", "extra") in found
    assert len(found) == 1 + len(note) + 1, tampered.stdout
    line = json.loads(tampered.stdout.splitlines()[0])
    assert set(line) == {"table", "key", "kind", "live", "rebuilt"}
    one_queue = lineup("verify", "queues", env=env)
    assert one_queue.returncode == 1
    assert differences(one_queue) == {("queue_entries", entry_id, "different")}

    repaired = lineup("rebuild", "--all", env=env)
    assert repaired.returncode == 0, repaired.stderr
    assert f"{len(found)} rows differed" in repaired.stdout
    again = lineup("verify", "--all", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert reads(client, server, event_id, fans) == before


def test_unknown_projection_and_bad_usage_exit_2_with_one_line(server: LineupServer) -> None:
    env = env_of(server.settings)
    for args in (["verify", "nope"], ["rebuild", "nope"], ["rebuild"], ["verify", "queues", "--all"]):
        done = lineup(*args, env=env)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "Traceback" not in done.stderr
    for command in ("rebuild", "verify"):
        helped = lineup(command, "--help", env=env)
        assert helped.returncode == 0
        assert "Rebuild" in helped.stdout
    listed = [line.strip() for line in lineup("--help", env=env).stdout.splitlines()]
    summaries = [line for line in listed if line.startswith(("rebuild ", "verify "))]
    assert len(summaries) == 2  # one untruncated line each
    assert not any(line.endswith("...") for line in summaries), summaries


def test_on_an_unmigrated_schema_verify_exits_2(server: LineupServer) -> None:
    done = lineup("verify", "--all", env=env_of(server.settings, f"t_{uuid.uuid4().hex[:12]}"))
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def table_rows(server: LineupServer, schema: str) -> dict[str, list[dict[str, Any]]]:
    settings = server.settings
    tables = ["queue_summary", "queue_entries", "notifications", "stripe_accounts", "payments", "projection_tracking"]
    with psycopg.connect(str(settings.database_url), autocommit=True, row_factory=dict_row) as conn:
        return {t: conn.execute(f'SELECT * FROM "{schema}".{t} ORDER BY 1').fetchall() for t in tables}


def sql_in(database: Database, statement: str) -> None:
    with database.connect() as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def rebuild_process(env: dict[str, str], kill_after: float | None = None) -> tuple[int, float]:
    """`lineup rebuild --all`, killed with -9 `kill_after` s after its first progress line, or run to
    its end. Returns its exit code and the seconds from its first progress line to its "switching" line
    (when it got there)."""
    process = subprocess.Popen(
        [str(LINEUP), "rebuild", "--all"], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    assert process.stderr is not None
    first = process.stderr.readline()
    assert "events" in first, first
    started, building = time.monotonic(), 0.0
    if kill_after is None:
        for line in process.stderr:
            if "switching" in line:
                building = time.monotonic() - started
    else:
        time.sleep(kill_after)
        process.send_signal(signal.SIGKILL)
    code = process.wait(60)
    process.stderr.close()
    return code, building


def test_kill_9_during_rebuild_leaves_the_live_model_untouched_and_a_rerun_succeeds(server: LineupServer) -> None:
    from domain.queues import Queues
    from entrypoints.bootstrap import migrate
    from scripts.generate_events import generate

    schema = f"t_{uuid.uuid4().hex[:12]}"  # no `lineup serve` projects here: rebuild goes to the head
    settings = dataclasses.replace(server.settings, database_schema=schema)
    database = Database(str(settings.database_url), schema)
    app: Queues = migrate(settings, database)
    try:
        with database.connect() as conn:
            generate(app, conn, 4000, queues=10, batch=2000)
        env = env_of(settings, schema)
        code, building = rebuild_process(env)
        assert code == 0
        forge = (
            "INSERT INTO payments (payment_id, amount, currency, status, updated_at)"
            " VALUES ('pi_forged', 1, 'eur', 'failed', 1)"
        )
        sql_in(database, forge)
        live = table_rows(server, schema)
        # A writer's lock on a live table (as a live projector mid-batch holds) keeps every run from
        # switching, so each kill lands before any commit: while building (shares of the first run's
        # time to the switch, which varies with the machine's load) or while waiting to switch.
        with database.connect() as writer, writer.transaction():
            writer.execute("LOCK TABLE payments IN ROW EXCLUSIVE MODE")
            for share in (0.1, 0.5, 2.0):
                code, reached_switch = rebuild_process(env, kill_after=share * building)
                assert code == -signal.SIGKILL
                assert reached_switch == 0.0
                assert table_rows(server, schema) == live
        rerun = lineup("rebuild", "--all", env=env)
        assert rerun.returncode == 0, rerun.stderr
        rebuilt = table_rows(server, schema)
        assert not any(row["payment_id"] == "pi_forged" for row in rebuilt["payments"])
        assert len(rebuilt["queue_entries"]) > 1000
        head = app.recorder.max_notification_id()
        tracked = {row["application_name"]: row["notification_id"] for row in rebuilt["projection_tracking"]}
        assert {name: tracked.get(name) for name in ("queues", "notifications", "stripe")} == dict.fromkeys(
            ("queues", "notifications", "stripe"), head
        )
        verified = lineup("verify", "--all", env=env)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        with database.connect() as conn:
            scratch = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (f"{schema}__rb_%",))
            assert scratch.fetchall() == []
    finally:
        app.close()
        with database.connect() as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def ws_url(server: LineupServer) -> str:
    return server.base_url.replace("http://", "ws://") + "/ws"


class Traffic:
    """While a command runs: the scenario's reads in a loop (statuses kept), and joins to another
    queue (the live projector must wait for the switch, then go on, neither failing nor skipping)."""

    def __init__(self, server: LineupServer, event_id: str, fans: list[str]) -> None:
        self.server, self.event_id, self.fans = server, event_id, fans
        self.busy = f"{event_id}-busy"
        self.statuses: list[int] = []
        self.joined: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.read), threading.Thread(target=self.join)]

    def read(self) -> None:
        with self.server.client() as http:
            while not self.stop.is_set():
                answers = reads(http, self.server, self.event_id, self.fans)
                self.statuses.extend(status for _path, status, _body in answers)

    def join(self) -> None:
        with self.server.client() as http:
            post(http, self.server, f"/events/{self.busy}/queue", "owner", {"name": "Busy"})
            while not self.stop.is_set():
                user = f"w-{self.busy}-{len(self.joined)}"
                post(http, self.server, f"/events/{self.busy}/queue/join", user)
                self.joined.append(user)

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def corrupt(server: LineupServer, event_id: str, entry_id: str, fan: str, note_id: str) -> None:
    """Corrupt the read model *and* what subscribers were told (the publisher republishes a dirty
    queue; a feed row removes the notification), so the switch has to correct both."""
    sql(server, "UPDATE queue_entries SET status = 'called' WHERE entry_id = %s", (entry_id,))
    sql(server, "INSERT INTO live_dirty (queue_id) SELECT queue_id FROM queue_summary WHERE event_id = %s", (event_id,))
    sql(server, "DELETE FROM notifications WHERE notification_id = %s", (note_id,))
    settings = server.settings
    options = f"-c search_path={settings.database_schema}"
    conn = psycopg.connect(str(settings.database_url), row_factory=dict_row, options=options)
    with conn, conn.transaction(), conn.cursor() as cursor:
        changes.append(cursor, [("notifications.user", fan, note_id, "remove", None)])


def test_rebuild_beside_a_serving_server_keeps_reads_answering_and_sockets_end_equal(
    server: LineupServer, client: httpx.Client
) -> None:
    event_id, fans = scenario(client, server)
    settled(client)
    before = reads(client, server, event_id, fans)
    entry_id = sql(
        server, "SELECT entry_id FROM queue_entries WHERE event_id = %s AND status = 'waiting' LIMIT 1", (event_id,)
    )[0]["entry_id"]
    note_id = sql(server, "SELECT notification_id FROM notifications WHERE user_id = %s LIMIT 1", (fans[1],))[0][
        "notification_id"
    ]
    env = env_of(server.settings)

    async def watch() -> None:
        async with LiveClient(ws_url(server), server.token("backend", role="service")) as live:
            entries = await live.subscribe("queue.event", {"event_id": event_id})
            notes = await live.subscribe("notifications.user", {"user_id": fans[1]})
            views = (
                entries,
                await live.subscribe("queue.user", {"user_id": fans[1]}),
                notes,
                await live.subscribe("queue.summary", {"event_id": event_id}),
            )
            truth = [dict(view.rows) for view in views]
            corrupt(server, event_id, entry_id, fans[1], note_id)
            await entries.wait_for(lambda rows: rows.get(entry_id, {}).get("status") == "called", timeout=10)
            await notes.wait_for(lambda rows: note_id not in rows, timeout=10)

            with Traffic(server, event_id, fans) as traffic:
                done = await asyncio.to_thread(lineup, "rebuild", "--all", env=env)
            assert done.returncode == 0, done.stderr
            assert traffic.statuses
            assert set(traffic.statuses) == {200}
            assert traffic.joined
            with server.client() as http:
                settled(http)
                listed = http.get(f"/events/{traffic.busy}/queue", headers=server.headers("owner")).json()
            assert [entry["user_id"] for entry in listed] == traffic.joined
            verified = await asyncio.to_thread(lineup, "verify", "--all", env=env)
            assert verified.returncode == 0, verified.stdout + verified.stderr
            for view, rows in zip(views, truth, strict=True):
                await view.wait_for(lambda now, rows=rows: now == rows, timeout=10)
            async with LiveClient(ws_url(server), server.token("backend", role="service")) as fresh:
                for view in views:
                    snapshot = await fresh.subscribe(view.query, view.args)
                    assert snapshot.rows == view.rows

    asyncio.run(watch())
    assert reads(client, server, event_id, fans) == before
