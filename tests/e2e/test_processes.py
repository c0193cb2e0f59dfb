"""Several `lineup serve` processes on one database: shared writes, one projector, take-over on a crash."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from entrypoints.settings import Settings
from tests.e2e.conftest import LineupServer, free_port


class WorkersServer(LineupServer):
    """`lineup serve` with LINEUP_WORKERS=2 (two worker processes on SO_REUSEPORT sockets)."""

    def env(self) -> dict[str, str]:
        return {**super().env(), "LINEUP_WORKERS": "2"}


@pytest.fixture
def two_servers(server_settings: Settings) -> Iterator[tuple[LineupServer, LineupServer]]:
    first = LineupServer(server_settings, server_settings.data_dir / "first.log")
    second_settings = dataclasses.replace(server_settings, port=free_port())
    second = LineupServer(second_settings, server_settings.data_dir / "second.log")
    try:
        first.start()  # started first, so it wins the projector election
        second.start()
        yield first, second
    finally:
        first.stop()
        second.stop()


def eventually_listed(server: LineupServer, owner: str, event_id: str, expected: int, timeout: float = 10.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        listed = httpx.get(f"{server.base_url}/events/{event_id}/queue", headers=server.headers(owner)).json()
        if len(listed) >= expected or time.monotonic() > deadline:
            return listed
        time.sleep(0.1)


def test_a_command_on_one_process_is_read_on_the_other(two_servers: tuple[LineupServer, LineupServer]) -> None:
    first, second = two_servers
    event_id, owner = f"ev-{uuid.uuid4().hex[:8]}", f"owner-{uuid.uuid4().hex[:8]}"
    assert (
        httpx.post(
            f"{first.base_url}/events/{event_id}/queue", json={"name": "Both"}, headers=first.headers(owner)
        ).status_code
        == 201
    )
    users = [f"u-{uuid.uuid4().hex[:8]}" for _ in range(6)]
    for n, user in enumerate(users):
        server = (first, second)[n % 2]
        response = httpx.post(f"{server.base_url}/events/{event_id}/queue/join", headers=server.headers(user))
        assert response.status_code == 201, response.text
        assert response.json()["position"] == n + 1
        # read-your-writes across processes: the other process's GET already sees it
        other = (second, first)[n % 2]
        mine = httpx.get(f"{other.base_url}/users/{user}/queue", headers=other.headers(user)).json()
        assert [entry["position"] for entry in mine] == [n + 1]
    listed = httpx.get(f"{second.base_url}/events/{event_id}/queue", headers=second.headers(owner)).json()
    assert [entry["user_id"] for entry in listed] == users


def test_when_the_projecting_process_dies_the_other_takes_over(two_servers: tuple[LineupServer, LineupServer]) -> None:
    first, second = two_servers
    event_id, owner = f"ev-{uuid.uuid4().hex[:8]}", f"owner-{uuid.uuid4().hex[:8]}"
    assert (
        httpx.post(
            f"{second.base_url}/events/{event_id}/queue", json={"name": "Crash"}, headers=second.headers(owner)
        ).status_code
        == 201
    )
    before = httpx.post(f"{second.base_url}/events/{event_id}/queue/join", headers=second.headers("before"))
    assert before.status_code == 201
    assert first.process is not None
    first.process.kill()  # SIGKILL: no clean-up; its session (and the projector lock) ends with it
    first.process.wait(10)
    first.process = None
    after = httpx.post(f"{second.base_url}/events/{event_id}/queue/join", headers=second.headers("after"))
    assert after.status_code == 201
    listed = eventually_listed(second, owner, event_id, expected=2)
    assert [entry["user_id"] for entry in listed] == ["before", "after"]
    ready = httpx.get(f"{second.base_url}/ready")
    assert ready.status_code == 200, ready.text


def test_two_workers_behind_one_port_serve_every_join_once(server_settings: Settings) -> None:
    settings = dataclasses.replace(server_settings, port=free_port())
    server = WorkersServer(settings, settings.data_dir / "workers.log")
    try:
        server.start()
        event_id, owner = f"ev-{uuid.uuid4().hex[:8]}", f"owner-{uuid.uuid4().hex[:8]}"
        opened = httpx.post(
            f"{server.base_url}/events/{event_id}/queue", json={"name": "W"}, headers=server.headers(owner)
        )
        assert opened.status_code == 201
        users = [f"w-{n}" for n in range(40)]

        def join(user: str) -> int:
            with httpx.Client(base_url=server.base_url) as client:  # a new connection per user
                response = client.post(f"/events/{event_id}/queue/join", headers=server.headers(user))
                assert response.status_code == 201, response.text
                return int(response.json()["position"])

        with ThreadPoolExecutor(8) as pool:
            positions = list(pool.map(join, users))
        assert sorted(positions) == list(range(1, len(users) + 1))
        listed = eventually_listed(server, owner, event_id, expected=len(users))
        assert sorted(entry["user_id"] for entry in listed) == sorted(users)
        assert server.stop() == 0  # SIGTERM stops both workers and the supervisor cleanly
    finally:
        server.stop()


def test_a_command_on_one_process_reaches_a_socket_on_the_other(two_servers: tuple[LineupServer, LineupServer]) -> None:
    import asyncio
    import json

    import websockets

    first, second = two_servers
    event_id = f"ev-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        async with websockets.connect(second.base_url.replace("http", "ws") + "/ws") as ws:
            await ws.send(json.dumps({"type": "auth", "token": second.token("watcher")}))
            assert json.loads(await ws.recv())["type"] == "ready"
            sub = {"type": "subscribe", "id": "s", "query": "queue.summary", "args": {"event_id": event_id}}
            await ws.send(json.dumps(sub))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["rows"] == []
            opened = httpx.post(
                f"{first.base_url}/events/{event_id}/queue", json={"name": "X"}, headers=first.headers("o")
            )
            assert opened.status_code == 201
            change = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert (change["type"], change["key"], change["row"]["name"]) == ("change", event_id, "X")

    asyncio.run(scenario())


def test_sockets_are_closed_1001_when_the_server_shuts_down(server_settings: Settings) -> None:
    import asyncio
    import json

    import websockets

    settings = dataclasses.replace(server_settings, port=free_port())
    server = LineupServer(settings, settings.data_dir / "shutdown.log")
    server.start()
    try:

        async def scenario() -> int | None:
            async with websockets.connect(server.base_url.replace("http", "ws") + "/ws") as ws:
                await ws.send(json.dumps({"type": "auth", "token": server.token("u")}))
                assert json.loads(await ws.recv())["type"] == "ready"
                assert server.process is not None
                server.process.terminate()  # SIGTERM
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 10)
                except websockets.ConnectionClosed:
                    return ws.close_code

        assert asyncio.run(scenario()) == 1001
        assert server.stop() == 0
    finally:
        server.stop()


def projector_children(pid: int) -> list[int]:
    """The pids of `lineup serve`'s projector processes (multiprocessing children of `pid`)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            if f"PPid:\t{pid}\n" in status.read_text():
                cmdline = (status.parent / "cmdline").read_bytes()
                if b"multiprocessing.spawn" in cmdline:
                    found.append(int(status.parent.name))
    return found


def until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_projector_process_that_dies_is_replaced_and_nothing_is_lost(server: LineupServer) -> None:
    assert server.process is not None
    [projector] = projector_children(server.process.pid)
    event_id, owner = f"ev-{uuid.uuid4().hex[:8]}", f"owner-{uuid.uuid4().hex[:8]}"
    opened = httpx.post(f"{server.base_url}/events/{event_id}/queue", json={"name": "P"}, headers=server.headers(owner))
    assert opened.status_code == 201
    os.kill(projector, signal.SIGKILL)
    joined = httpx.post(f"{server.base_url}/events/{event_id}/queue/join", headers=server.headers("while-down"))
    assert joined.status_code == 201  # commands do not need the projector
    pid = server.process.pid
    assert until(lambda: projector_children(pid) not in ([], [projector]))  # started again
    listed = eventually_listed(server, owner, event_id, expected=1)
    assert [entry["user_id"] for entry in listed] == ["while-down"]
    assert httpx.get(f"{server.base_url}/ready").status_code == 200


def test_a_killed_server_leaves_no_projector_process_behind(server_settings: Settings) -> None:
    settings = dataclasses.replace(server_settings, port=free_port())
    server = LineupServer(settings, settings.data_dir / "orphan.log")
    server.start()
    try:
        assert server.process is not None
        [projector] = projector_children(server.process.pid)
        server.process.kill()  # SIGKILL: the serving process cannot stop its child
        server.process.wait(10)
        assert until(lambda: not Path(f"/proc/{projector}").exists() or zombie(projector), timeout=5)
    finally:
        server.stop()


def zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    return True
