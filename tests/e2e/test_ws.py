"""The /ws gateway over real sockets against a real `lineup serve` (queue.summary is live so far)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import psycopg
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.e2e.conftest import LineupServer

TIMEOUT = 5.0


def ws_url(server: LineupServer) -> str:
    return server.base_url.replace("http://", "ws://") + "/ws"


async def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(frame, dict)
    return frame


async def connect(server: LineupServer, user: str) -> ClientConnection:
    ws = await websockets.connect(ws_url(server))
    await ws.send(json.dumps({"type": "auth", "token": server.token(user)}))
    ready = await recv(ws)
    assert ready["type"] == "ready"
    assert isinstance(ready["cursor"], int)
    return ws


async def subscribe(ws: ClientConnection, sub_id: str, event_id: str, after: int | None = None) -> None:
    frame: dict[str, Any] = {
        "type": "subscribe",
        "id": sub_id,
        "query": "queue.summary",
        "args": {"event_id": event_id},
    }
    if after is not None:
        frame["after"] = after
    await ws.send(json.dumps(frame))


def post(server: LineupServer, path: str, user: str, body: dict[str, Any] | None = None) -> httpx.Response:
    response = httpx.post(f"{server.base_url}{path}", json=body, headers=server.headers(user))
    assert response.status_code in (200, 201), response.text
    return response


def new_event() -> str:
    return f"ws-{uuid.uuid4().hex[:10]}"


async def closed_with(ws: ClientConnection) -> int | None:
    """Read until the server closes; the close code (a timeout fails the test)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 15)
    except websockets.ConnectionClosed:
        return ws.close_code


def test_snapshot_then_a_change_for_every_command(server: LineupServer) -> None:
    async def scenario() -> None:
        event_id = new_event()
        post(server, f"/events/{event_id}/queue", "owner", {"name": "Live"})
        ws = await connect(server, "watcher")
        await subscribe(ws, "s1", event_id)
        snapshot = await recv(ws)
        assert (snapshot["type"], snapshot["id"], snapshot["reset"]) == ("snapshot", "s1", False)
        assert [row["waiting"] for row in snapshot["rows"]] == [0]
        cursor = snapshot["cursor"]
        expected = [
            ("join", "a", 1),
            ("join", "b", 2),
            ("call-next", "owner", 1),
            ("leave", "b", 0),
        ]
        for action, user, waiting in expected:
            post(server, f"/events/{event_id}/queue/{action}", user)
            change = await recv(ws)
            assert (change["type"], change["id"], change["op"], change["key"]) == ("change", "s1", "upsert", event_id)
            assert change["row"]["waiting"] == waiting
            assert change["cursor"] > cursor
            cursor = change["cursor"]
        summary = httpx.get(f"{server.base_url}/events/{event_id}/queue/summary", headers=server.headers("x")).json()
        assert change["row"] == summary  # the live row is the HTTP answer
        await ws.close()

    asyncio.run(scenario())


def test_resume_delivers_exactly_the_missed_changes(server: LineupServer) -> None:
    async def scenario() -> None:
        event_id = new_event()
        post(server, f"/events/{event_id}/queue", "owner", {"name": "Resume"})
        ws = await connect(server, "watcher")
        await subscribe(ws, "s", event_id)
        last = (await recv(ws))["cursor"]
        await ws.close()
        for user in ("a", "b", "c"):  # missed while disconnected
            post(server, f"/events/{event_id}/queue/join", user)
        ws = await connect(server, "watcher")
        await subscribe(ws, "s", event_id, after=last)
        missed = [await recv(ws) for _ in range(3)]
        assert [frame["row"]["waiting"] for frame in missed] == [1, 2, 3]
        cursors = [frame["cursor"] for frame in missed]
        assert cursors == sorted(cursors)
        assert cursors[0] > last
        with pytest.raises(TimeoutError):  # nothing twice
            await recv(ws, timeout=0.5)
        post(server, f"/events/{event_id}/queue/join", "d")
        live = await recv(ws)
        assert (live["row"]["waiting"], live["cursor"] > cursors[-1]) == (4, True)
        await ws.close()

    asyncio.run(scenario())


def test_a_cursor_older_than_the_kept_changes_gets_a_reset_snapshot(server: LineupServer) -> None:
    async def scenario() -> None:
        event_id = new_event()
        post(server, f"/events/{event_id}/queue", "owner", {"name": "Old"})
        post(server, f"/events/{event_id}/queue/join", "a")
        # a read waits until projections (and published rows) have caught up: then trim everything
        assert httpx.get(f"{server.base_url}/events/{event_id}/queue/summary", headers=server.headers("a")).is_success
        settings = server.settings
        with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
            conn.execute(f'SET search_path = "{settings.database_schema}"')
            (head,) = conn.execute("SELECT cursor FROM change_feed_head").fetchone() or (0,)
            conn.execute("DELETE FROM change_feed WHERE cursor <= %s", (head,))  # what clean-up does after 24 h
        ws = await connect(server, "watcher")
        await subscribe(ws, "s", event_id, after=1)
        snapshot = await recv(ws)
        assert (snapshot["type"], snapshot["reset"]) == ("snapshot", True)
        assert [row["waiting"] for row in snapshot["rows"]] == [1]
        await ws.close()

    asyncio.run(scenario())


def test_per_subscription_errors_keep_the_connection_open(server: LineupServer) -> None:
    async def scenario() -> None:
        ws = await connect(server, "u")
        await ws.send(json.dumps({"type": "subscribe", "id": 1, "query": "no.such", "args": {}}))
        assert await recv(ws) == {
            "type": "error",
            "id": 1,
            "error": "unknown_query",
            "detail": "no live query named 'no.such'",
        }
        await ws.send(json.dumps({"type": "subscribe", "id": 2, "query": "queue.summary", "args": {"user_id": "x"}}))
        error = await recv(ws)
        assert (error["id"], error["error"]) == (2, "bad_args")
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv(ws) == {"type": "pong"}
        await ws.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("first", "code"),
    [
        ('{"type": "subscribe", "id": "s", "query": "queue.summary", "args": {"event_id": "e"}}', 4401),
        ('{"type": "auth", "token": "not-a-jwt"}', 4401),
        ("this is not json", 4400),
        ('{"type": "dance"}', 4400),
    ],
)
def test_close_codes_for_a_bad_first_frame(server: LineupServer, first: str, code: int) -> None:
    async def scenario() -> None:
        ws = await websockets.connect(ws_url(server))
        await ws.send(first)
        assert await closed_with(ws) == code

    asyncio.run(scenario())


def test_more_than_100_subscriptions_closes_4429(server: LineupServer) -> None:
    async def scenario() -> None:
        ws = await connect(server, "greedy")
        for n in range(101):
            await subscribe(ws, f"s{n}", f"event-{n}")
        assert await closed_with(ws) == 4429

    asyncio.run(scenario())


def test_no_auth_within_10_seconds_closes_4408(server: LineupServer) -> None:
    async def scenario() -> None:
        ws = await websockets.connect(ws_url(server))
        assert await closed_with(ws) == 4408

    asyncio.run(scenario())


def test_token_refresh_in_band_and_auth_expired(server: LineupServer) -> None:
    async def scenario() -> None:
        event_id = new_event()
        post(server, f"/events/{event_id}/queue", "owner", {"name": "Refresh"})
        ws = await websockets.connect(ws_url(server))
        await ws.send(json.dumps({"type": "auth", "token": server.token("short", ttl=2)}))
        assert (await recv(ws))["type"] == "ready"
        await subscribe(ws, "s", event_id)
        assert (await recv(ws))["type"] == "snapshot"
        assert await recv(ws) == {"type": "auth_expired"}
        await ws.send(json.dumps({"type": "auth", "token": server.token("short")}))  # refreshed: no gap
        post(server, f"/events/{event_id}/queue/join", "a")
        change = await recv(ws)
        assert (change["type"], change["row"]["waiting"]) == ("change", 1)
        await ws.send(json.dumps({"type": "auth", "token": server.token("someone-else")}))
        assert await closed_with(ws) == 4401  # a refresh may not switch users

    asyncio.run(scenario())


def apply(view: dict[str, Any], frame: dict[str, Any]) -> None:
    """A client's rebuilt view: snapshots replace it, changes upsert or remove one row."""
    assert frame["type"] in ("snapshot", "change"), frame
    if frame["type"] == "snapshot":
        view.clear()
        view.update({row["entry_id"]: row for row in frame["rows"]})
    elif frame["op"] == "upsert":
        view[frame["key"]] = frame["row"]
    else:
        view.pop(frame["key"], None)


async def converge(ws: ClientConnection, view: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    """Apply frames until the view equals the HTTP answer (each frame must arrive within TIMEOUT)."""
    wanted = {row["entry_id"]: row for row in expected}
    while view != wanted:
        apply(view, await recv(ws))


def test_queue_event_and_queue_user_views_equal_the_http_answers(server: LineupServer) -> None:
    async def scenario() -> None:
        event_id = new_event()
        post(server, f"/events/{event_id}/queue", "boss", {"name": "Rows"})
        owner = await connect(server, "boss")
        await owner.send(
            json.dumps({"type": "subscribe", "id": "q", "query": "queue.event", "args": {"event_id": event_id}})
        )
        fan = await connect(server, "fan-b")
        await fan.send(
            json.dumps({"type": "subscribe", "id": "me", "query": "queue.user", "args": {"user_id": "fan-b"}})
        )
        owner_view: dict[str, Any] = {}
        fan_view: dict[str, Any] = {}
        apply(owner_view, await recv(owner))
        apply(fan_view, await recv(fan))
        assert owner_view == fan_view == {}
        for step in [
            ("join", "fan-a"),
            ("join", "fan-b"),
            ("join", "fan-c"),
            ("call-next", "boss"),
            ("leave", "fan-c"),
        ]:
            action, user = step
            post(server, f"/events/{event_id}/queue/{action}", user)
            listed = httpx.get(f"{server.base_url}/events/{event_id}/queue", headers=server.headers("boss")).json()
            mine = httpx.get(f"{server.base_url}/users/fan-b/queue", headers=server.headers("fan-b")).json()
            await converge(owner, owner_view, listed)
            await converge(fan, fan_view, mine)
        assert [row["position"] for row in owner_view.values() if row["status"] == "waiting"] == [1]
        assert [row["position"] for row in fan_view.values()] == [1]
        await owner.close()
        await fan.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("user", "query", "args", "allowed"),
    [
        ("stranger", "queue.event", {"event_id": "EVENT"}, False),
        ("stranger", "queue.user", {"user_id": "someone"}, False),
        ("svc", "queue.user", {"user_id": "someone"}, True),
    ],
)
def test_live_queries_are_authorized_per_subscription(
    server: LineupServer, user: str, query: str, args: dict[str, str], allowed: bool
) -> None:
    async def scenario() -> None:
        event_id = new_event()
        post(server, f"/events/{event_id}/queue", "boss", {"name": "Private"})
        role = "service" if user == "svc" else "user"
        ws = await websockets.connect(ws_url(server))
        await ws.send(json.dumps({"type": "auth", "token": server.token(user, role=role)}))
        await recv(ws)
        concrete = {k: (event_id if v == "EVENT" else v) for k, v in args.items()}
        await ws.send(json.dumps({"type": "subscribe", "id": "s", "query": query, "args": concrete}))
        answer = await recv(ws)
        assert answer["type"] == ("snapshot" if allowed else "error")
        if not allowed:
            assert answer["error"] == "forbidden"
            await ws.send(json.dumps({"type": "ping"}))
            assert await recv(ws) == {"type": "pong"}  # the connection stays
        await ws.close()

    asyncio.run(scenario())


def test_changes_after_the_followers_connection_is_lost_arrive_once(server: LineupServer) -> None:
    """The feed follower's session is killed; it reconnects and goes on from what it handed over:
    nothing of before is dispatched again, nothing of after is missed."""

    async def scenario() -> None:
        event_id = new_event()
        post(server, f"/events/{event_id}/queue", "owner", {"name": "Reconnect"})
        ws = await connect(server, "watcher")
        await subscribe(ws, "s", event_id)
        await recv(ws)  # the snapshot
        post(server, f"/events/{event_id}/queue/join", "a")
        assert (await recv(ws))["row"]["waiting"] == 1
        assert server.process is not None
        with psycopg.connect(server.settings.database_url, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                (f"lineup-feed {server.process.pid}",),
            ).fetchall()
        assert killed == [(True,)]
        post(server, f"/events/{event_id}/queue/join", "b")
        assert (await recv(ws))["row"]["waiting"] == 2
        with pytest.raises(TimeoutError):  # nothing twice
            await recv(ws, timeout=1.5)
        await ws.close()

    asyncio.run(scenario())
