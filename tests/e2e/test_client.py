"""adapters/client.py against a real `lineup serve` over real sockets: views, errors, token refresh, resume."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from adapters.client import ClientError, LiveClient, LiveView, ServerClosed, SubscriptionError
from adapters.gateway import ChangeFrame, Snapshot
from entrypoints.settings import Settings
from tests.e2e.conftest import LineupServer, free_port


def ws_url(server: LineupServer) -> str:
    return server.base_url.replace("http://", "ws://") + "/ws"


def new_event() -> str:
    return f"cl-{uuid.uuid4().hex[:10]}"


async def post(server: LineupServer, path: str, user: str, body: dict[str, Any] | None = None) -> None:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as http:
        response = await http.post(path, json=body, headers=server.headers(user))
    assert response.status_code in (200, 201), response.text


async def summary(server: LineupServer, event_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as http:
        response = await http.get(f"/events/{event_id}/queue/summary", headers=server.headers("reader"))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert isinstance(answer, dict)
    return answer


def waiting(event_id: str, count: int) -> Any:
    return lambda rows: rows.get(event_id, {}).get("waiting") == count


async def drain(view: LiveView, quiet: float = 0.3) -> list[Snapshot | ChangeFrame]:
    """Every frame the view has applied and not yet handed out, until none comes for `quiet` seconds."""
    frames = []
    while True:
        try:
            frames.append(await view.next_event(timeout=quiet))
        except TimeoutError:
            return frames


def test_a_view_follows_joins_and_matches_the_http_summary(server: LineupServer) -> None:
    async def scenario() -> None:
        event_id = new_event()
        await post(server, f"/events/{event_id}/queue", "owner", {"name": "Client"})
        async with LiveClient(ws_url(server), server.token("watcher")) as client:
            view = await client.subscribe("queue.summary", {"event_id": event_id})
            assert view.cursor is not None
            first = await view.next_event(timeout=1)
            assert isinstance(first, Snapshot)
            assert not first.reset
            for user in ("a", "b", "c"):
                await post(server, f"/events/{event_id}/queue/join", user)
            rows = await view.wait_for(waiting(event_id, 3), timeout=5)
            assert rows == {event_id: await summary(server, event_id)}
            changes = await drain(view)
            assert all(isinstance(frame, ChangeFrame) for frame in changes)
            assert [frame.cursor for frame in changes] == sorted({frame.cursor for frame in changes})
            assert changes[-1].cursor == view.cursor
            await client.ping()

    asyncio.run(scenario())


def test_a_refused_subscription_raises_and_the_connection_goes_on(server: LineupServer) -> None:
    async def scenario() -> None:
        async with LiveClient(ws_url(server), server.token("u")) as client:
            with pytest.raises(SubscriptionError) as refused:
                await client.subscribe("no.such", {"event_id": "x"})
            assert refused.value.code == "unknown_query"
            with pytest.raises(SubscriptionError) as bad:
                await client.subscribe("queue.summary", {"user_id": "x"})
            assert bad.value.code == "bad_args"
            assert client.views == {}
            view = await client.subscribe("queue.summary", {"event_id": new_event()})
            assert view.failure is None
            await client.ping()

    asyncio.run(scenario())


def test_a_token_callable_keeps_short_lived_tokens_fresh(server: LineupServer) -> None:
    async def scenario() -> None:
        event_id = new_event()
        await post(server, f"/events/{event_id}/queue", "owner", {"name": "Fresh"})
        issued = []

        def token() -> str:
            issued.append(server.token("short", ttl=2))
            return issued[-1]

        async with LiveClient(ws_url(server), token) as client:
            view = await client.subscribe("queue.summary", {"event_id": event_id})
            await asyncio.sleep(4.5)  # each token expires after <= 2 s: auth_expired, refreshed, twice
            assert len(issued) >= 3
            await post(server, f"/events/{event_id}/queue/join", "a")
            await view.wait_for(waiting(event_id, 1), timeout=5)
            assert view.failure is None
            assert client.connections == 1  # refreshed in band, never reconnected

    asyncio.run(scenario())


def test_fatal_closes_are_raised_not_retried(server: LineupServer) -> None:
    async def scenario() -> None:
        with pytest.raises(ServerClosed) as refused:
            async with LiveClient(ws_url(server), "not-a-jwt"):
                pass
        assert refused.value.code == 4401
        async with LiveClient(ws_url(server), server.token("greedy")) as client:
            views = [await client.subscribe("queue.summary", {"event_id": f"e-{n}"}) for n in range(100)]
            with pytest.raises(ServerClosed) as greedy:
                await client.subscribe("queue.summary", {"event_id": "one-too-many"})
            assert greedy.value.code == 4429
            assert isinstance(await views[0].next_event(timeout=1), Snapshot)  # what was applied comes first
            with pytest.raises(ServerClosed):
                await views[0].next_event(timeout=1)
            with pytest.raises(ClientError):
                await client.subscribe("queue.summary", {"event_id": "after-the-end"})
            assert client.connections == 1

    asyncio.run(scenario())


@pytest.fixture
def second_server(server: LineupServer, server_settings: Settings) -> Iterator[LineupServer]:
    """Another `lineup serve` on the module's database, which this module's tests may restart."""
    settings = dataclasses.replace(server_settings, port=free_port())
    second = LineupServer(settings, server_settings.data_dir / f"second-{settings.port}.log")
    try:
        second.start()
        yield second
    finally:
        second.stop()


def test_the_client_reconnects_and_resumes_without_gaps_or_duplicates(
    server: LineupServer, second_server: LineupServer
) -> None:
    async def scenario() -> None:
        event_id = new_event()
        await post(server, f"/events/{event_id}/queue", "owner", {"name": "Resume"})
        url = ws_url(second_server)
        async with LiveClient(url, server.token("watcher"), backoff_initial=0.05, backoff_max=0.5) as client:
            view = await client.subscribe("queue.summary", {"event_id": event_id})
            await post(server, f"/events/{event_id}/queue/join", "a")
            await view.wait_for(waiting(event_id, 1))
            before = view.cursor
            await asyncio.to_thread(second_server.stop)  # the client's connection drops
            for user in ("b", "c"):  # committed (through the other process) while the client is away
                await post(server, f"/events/{event_id}/queue/join", user)
            await asyncio.sleep(0.3)  # a few refused reconnects
            await asyncio.to_thread(second_server.start)
            await view.wait_for(waiting(event_id, 3), timeout=10)
            await asyncio.to_thread(second_server.restart)  # and once more, with joins after it
            for user in ("d", "e"):
                await post(second_server, f"/events/{event_id}/queue/join", user)
            rows = await view.wait_for(waiting(event_id, 5), timeout=10)
            assert rows == {event_id: await summary(second_server, event_id)}
            assert client.connections == 3
            frames = await drain(view)
            assert isinstance(frames[0], Snapshot)
            resumed = [frame for frame in frames[1:] if frame.cursor > (before or 0)]
            assert all(isinstance(frame, ChangeFrame) for frame in resumed), "resumed exactly, no reset snapshot"
            applied = Counter(frame.cursor for frame in frames)
            assert [cursor for cursor, times in applied.items() if times > 1] == []  # no cursor applied twice
            assert [frame.cursor for frame in frames] == sorted(applied)
            waits = [frame.row["waiting"] for frame in resumed if isinstance(frame, ChangeFrame) and frame.row]
            assert waits == [2, 3, 4, 5]

    asyncio.run(scenario())


def test_a_view_past_the_kept_changes_is_reset_and_one_added_while_away_starts_on_reconnect(
    server: LineupServer, second_server: LineupServer
) -> None:
    async def scenario() -> None:
        event_id, other_id = new_event(), new_event()
        for event in (event_id, other_id):
            await post(server, f"/events/{event}/queue", "owner", {"name": "Reset"})
        url = ws_url(second_server)
        async with LiveClient(url, server.token("watcher"), backoff_initial=0.05, backoff_max=0.5) as client:
            view = await client.subscribe("queue.summary", {"event_id": event_id})
            await asyncio.to_thread(second_server.stop)
            await post(server, f"/events/{event_id}/queue/join", "a")
            await post(server, f"/events/{other_id}/queue/join", "a")
            settings = server.settings
            with psycopg.connect(str(settings.database_url), autocommit=True) as conn:
                conn.execute(f'SET search_path = "{settings.database_schema}"')
                (head,) = conn.execute("SELECT cursor FROM change_feed_head").fetchone() or (0,)
                conn.execute("DELETE FROM change_feed WHERE cursor <= %s", (head,))  # as if 24 h had passed
            added = asyncio.create_task(client.subscribe("queue.summary", {"event_id": other_id}))
            await asyncio.sleep(0.2)
            assert not added.done()  # waits for the connection
            await asyncio.to_thread(second_server.start)
            other = await added
            assert other.rows == {other_id: await summary(server, other_id)}
            await view.wait_for(waiting(event_id, 1))
            frames = [await view.next_event(timeout=1) for _ in range(2)]
            assert [getattr(frame, "reset", "change") for frame in frames] == [False, True]  # rows replaced
            assert view.rows == {event_id: await summary(server, event_id)}

    asyncio.run(scenario())
