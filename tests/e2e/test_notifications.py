"""Notifications end to end: backend messages, queue moments, live delivery, expiry and `lineup cleanup`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
from websockets.asyncio.client import ClientConnection

from entrypoints.settings import Settings
from tests.e2e.conftest import JWT_SECRET, LINEUP, LineupServer, free_port
from tests.e2e.support import assert_error, connect, eventually, now_ms, present, recv, uid

KEYS = {"notification_id", "user_id", "type", "data", "created_at", "expires_at"}
SHORT_TTL = 2
T = TypeVar("T")


# Helpers ------------------------------------------------------------------------------------------


def notify(server: LineupServer, http: httpx.Client, user: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    response = http.post(
        "/notifications",
        json={"user_id": user, "type": kind, "data": data},
        headers=server.headers("backend", role="service"),
    )
    assert response.status_code == 201, response.text
    row = response.json()
    assert set(row) == KEYS, row
    return dict(row)


def notes(
    server: LineupServer, http: httpx.Client, user: str, since: int | None = None, kind: str | None = None
) -> list[dict[str, Any]]:
    params = {} if since is None else {"since": since}
    response = http.get(f"/users/{user}/notifications", params=params, headers=server.headers(user))
    assert response.status_code == 200, response.text
    rows = response.json()
    assert isinstance(rows, list)
    for row in rows:
        assert set(row) == KEYS, row
        assert row["user_id"] == user
    assert [r["created_at"] for r in rows] == sorted(r["created_at"] for r in rows)  # oldest first
    return [row for row in rows if kind is None or row["type"] == kind]


async def subscribe(ws: ClientConnection, sub: str, args: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "subscribe", "id": sub, "query": "notifications.user", "args": args}))
    return await recv(ws)


# (1) Backend notifications over HTTP -----------------------------------------------------------------------


def test_a_service_sends_a_notification_and_the_user_reads_it(server: LineupServer, client: httpx.Client) -> None:
    user = uid("reader")
    before = now_ms()
    row = notify(server, client, user, "promo.offer", {"text": "Doors open at 8", "seats": [1, 2]})
    after = now_ms()
    assert (row["user_id"], row["type"], row["data"]) == (
        user,
        "promo.offer",
        {"text": "Doors open at 8", "seats": [1, 2]},
    )
    assert before - 1000 <= row["created_at"] <= after + 1000
    assert row["expires_at"] == row["created_at"] + server.settings.notification_ttl * 1000
    assert eventually(lambda: present(notes(server, client, user))) == [row]
    # a service may read anyone's; nobody else may
    served = client.get(f"/users/{user}/notifications", headers=server.headers("backend", role="service"))
    assert served.status_code == 200, served.text
    assert served.json() == [row]
    assert_error(client.get(f"/users/{user}/notifications", headers=server.headers(uid("other"))), 403, "forbidden")
    assert_error(client.get(f"/users/{user}/notifications"), 401, "unauthenticated")


def test_only_a_service_may_send(server: LineupServer, client: httpx.Client) -> None:
    user = uid("target")
    body = {"user_id": user, "type": "hello", "data": {}}
    assert_error(client.post("/notifications", json=body, headers=server.headers(user)), 403, "forbidden")
    assert_error(client.post("/notifications", json=body, headers=server.headers(uid("u"))), 403, "forbidden")
    assert_error(client.post("/notifications", json=body), 401, "unauthenticated")
    notify(server, client, uid("marker"), "marker", {})  # recorded after the refused ones
    time.sleep(0.3)
    assert notes(server, client, user) == []


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"user_id": "u", "type": ', id="malformed-json"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'{"type": "t", "data": {}}', id="no-user"),
        pytest.param(b'{"user_id": "u", "data": {}}', id="no-type"),
        pytest.param(b'{"user_id": 7, "type": "t", "data": {}}', id="user-number"),
        pytest.param(b'{"user_id": "u", "type": "t", "data": "text"}', id="data-string"),
        pytest.param(b'{"user_id": "u", "type": "t", "data": {}, "colour": "red"}', id="unknown-field"),
        pytest.param(b'{"user_id": "", "type": "t", "data": {}}', id="empty-user"),
        pytest.param(b'{"user_id": "u", "type": "", "data": {}}', id="empty-type"),
    ],
)
def test_a_bad_body_is_400(server: LineupServer, client: httpx.Client, body: bytes) -> None:
    headers = {**server.headers("backend", role="service"), "Content-Type": "application/json"}
    assert_error(client.post("/notifications", content=body, headers=headers), 400, "bad_request")


def test_since_is_inclusive_and_rows_come_oldest_first(server: LineupServer, client: httpx.Client) -> None:
    user = uid("since")
    sent = []
    for n in range(3):
        sent.append(notify(server, client, user, "tick", {"n": n}))
        time.sleep(0.01)  # distinct milliseconds
    eventually(lambda: _equal([r["data"]["n"] for r in notes(server, client, user)], [0, 1, 2]))
    assert notes(server, client, user) == sent
    assert notes(server, client, user, since=sent[1]["created_at"]) == sent[1:]
    assert notes(server, client, user, since=sent[2]["created_at"] + 1) == []
    assert notes(server, client, user, since=0) == sent
    assert_error(
        client.get(f"/users/{user}/notifications", params={"since": "yesterday"}, headers=server.headers(user)),
        400,
        "bad_request",
    )


# (2) Queue moments ---------------------------------------------------------------------------------------


def test_queue_called_and_next_in_line(server: LineupServer, client: httpx.Client) -> None:
    event, owner = uid("ev"), uid("owner")
    a, b, c = uid("a"), uid("b"), uid("c")

    def post(path: str, user: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = client.post(f"/events/{event}/queue{path}", json=body, headers=server.headers(user))
        assert response.status_code in (200, 201), response.text
        return dict(response.json())

    def moments(user: str) -> list[tuple[str, str]]:
        rows = [r for r in notes(server, client, user) if r["type"] in ("queue.called", "queue.next")]
        for row in rows:
            assert row["data"]["event_id"] == event
            assert isinstance(row["data"]["message"], str)
            assert row["data"]["message"]
            if row["type"] == "queue.called":
                assert row["data"]["message"] == "It's your turn"
        return [(row["type"], row["data"]["entry_id"]) for row in rows]

    def expect(user: str, expected: list[tuple[str, str]]) -> None:
        eventually(lambda: _equal(moments(user), expected))

    post("", owner, {"name": "Signing"})
    ea, eb, ec = (post("/join", user)["entry_id"] for user in (a, b, c))
    expect(a, [("queue.next", ea)])  # the first to join is position 1 at once
    called = post("/call-next", owner)
    assert called["entry_id"] == ea
    expect(a, [("queue.next", ea), ("queue.called", ea)])
    expect(b, [("queue.next", eb)])  # b moved up to position 1
    post("/leave", b)
    expect(c, [("queue.next", ec)])  # the first waiting left: c is next
    post("/call-next", owner)
    expect(c, [("queue.next", ec), ("queue.called", ec)])
    time.sleep(0.3)
    assert moments(a) == [("queue.next", ea), ("queue.called", ea)]  # nothing twice
    assert moments(b) == [("queue.next", eb)]


def _equal(actual: T, expected: T) -> None:
    assert actual == expected


# (3) Live ---------------------------------------------------------------------------------------------------


def test_notifications_arrive_live(server: LineupServer, client: httpx.Client) -> None:
    user = uid("live")
    old = notify(server, client, user, "old", {})
    eventually(lambda: present(notes(server, client, user)))
    time.sleep(0.01)
    since = now_ms()

    async def scenario() -> None:
        ws = await connect(server, user)
        everything = await subscribe(ws, "all", {"user_id": user})
        assert (everything["type"], everything["rows"]) == ("snapshot", [old]), everything
        recent = await subscribe(ws, "recent", {"user_id": user, "since": since})
        assert (recent["type"], recent["rows"]) == ("snapshot", []), recent

        new = notify(server, client, user, "new", {"k": "v"})
        frames: dict[str, dict[str, Any]] = {}
        while len(frames) < 2:
            frame = await recv(ws)
            assert frame["type"] == "change", frame
            assert frame["id"] not in frames, frame
            frames[frame["id"]] = frame
        for frame in frames.values():
            assert (frame["op"], frame["key"], frame["row"]) == ("upsert", new["notification_id"], new)
        assert frames["all"]["cursor"] == frames["recent"]["cursor"]
        other = uid("other")
        notify(server, client, other, "not-yours", {})  # another user's: no frame here
        with pytest.raises(TimeoutError):
            await recv(ws, timeout=0.7)

        intruder = await connect(server, other)
        refused = await subscribe(intruder, "x", {"user_id": user})
        assert (refused["type"], refused["id"], refused["error"]) == ("error", "x", "forbidden"), refused
        bad = await subscribe(intruder, "y", {"user_id": other, "since": "yesterday"})
        assert (bad["type"], bad["error"]) == ("error", "bad_args"), bad
        service = await connect(server, "backend", role="service")
        watched = await subscribe(service, "s", {"user_id": user})
        assert watched["rows"] == [old, new]
        for socket in (ws, intruder, service):
            await socket.close()

    asyncio.run(scenario())


# (4) Expiry -----------------------------------------------------------------------------------------------


@pytest.fixture
def short_lived(database_url: str, schema: str, tmp_path: Path) -> Iterator[LineupServer]:
    """A server of its own whose notifications live 2 s."""
    settings = Settings(
        database_url=database_url,
        database_schema=schema,
        data_dir=tmp_path,
        host="127.0.0.1",
        port=free_port(),
        jwt_secret=JWT_SECRET,
        notification_ttl=SHORT_TTL,
    )
    lineup = LineupServer(settings, tmp_path / "serve.log")
    try:
        lineup.start()
        yield lineup
    finally:
        lineup.stop()


def stored(server: LineupServer, notification_id: str) -> bool:
    """Whether the row is still in the `notifications` table (expired or not)."""
    with psycopg.connect(str(server.settings.database_url), autocommit=True) as conn:
        conn.execute(f'SET search_path = "{server.settings.database_schema}"')
        row = conn.execute("SELECT expires_at FROM notifications WHERE notification_id = %s", (notification_id,))
        return row.fetchone() is not None


def sleep_until(epoch_ms: int) -> None:
    time.sleep(max(0.0, (epoch_ms - now_ms()) / 1000))


def test_expired_notifications_are_not_served_and_are_deleted(short_lived: LineupServer) -> None:
    server = short_lived
    user = uid("brief")
    with server.client() as http:
        first = notify(server, http, user, "soon-gone", {"n": 1})
        assert first["expires_at"] - first["created_at"] == SHORT_TTL * 1000
        assert eventually(lambda: present(notes(server, http, user))) == [first]

        async def snapshot_rows() -> list[dict[str, Any]]:
            ws = await connect(server, user)
            rows = (await subscribe(ws, "n", {"user_id": user}))["rows"]
            await ws.close()
            assert isinstance(rows, list)
            return rows

        if now_ms() < first["expires_at"] - 300:
            assert asyncio.run(snapshot_rows()) == [first]
        server.stop()  # `lineup cleanup` alone, below; no periodic clean-up meanwhile
        sleep_until(first["expires_at"] + 100)
        assert stored(server, first["notification_id"])

        done = subprocess.run(
            [str(LINEUP), "cleanup"], env=server.env(), capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip(), "cleanup prints what it removed"
        assert "Traceback" not in done.stderr
        assert not stored(server, first["notification_id"])

        server.start()
        second = notify(server, http, user, "also-gone", {"n": 2})
        sleep_until(second["expires_at"] + 100)
        assert notes(server, http, user) == []  # expired: never served, whether or not it is deleted yet
        assert asyncio.run(snapshot_rows()) == []
        # the server's own periodic clean-up deletes it too (its first run is at start-up; then every minute)
        server.restart()
        eventually(lambda: _equal(stored(server, second["notification_id"]), False))
