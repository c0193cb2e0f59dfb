"""Hypothesis over real sockets: random commands, disconnects and resumes; the rebuilt view equals the read model."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import LineupServer
from tests.e2e.test_ws import recv, ws_url

USERS = [f"h{i}" for i in range(5)]
Step = tuple[str, str]
steps = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["join", "leave"]), st.sampled_from(USERS)),
        st.tuples(st.just("call-next"), st.just("owner")),
        st.tuples(st.just("toggle"), st.just("")),  # disconnect, or reconnect with `after`
    ),
    min_size=1,
    max_size=8,
)


class Follower:
    """A minimal client: one connection, two subscriptions, views rebuilt from frames only."""

    def __init__(self, server: LineupServer, event_id: str) -> None:
        self.server, self.event_id = server, event_id
        self.views: dict[str, dict[str, Any]] = {"summary": {}, "entries": {}}
        self.cursors: dict[str, int | None] = {"summary": None, "entries": None}
        self.ws: Any = None

    async def connect(self) -> None:
        import websockets

        self.ws = await websockets.connect(ws_url(self.server))
        await self.ws.send(json.dumps({"type": "auth", "token": self.server.token("owner")}))
        assert (await recv(self.ws))["type"] == "ready"
        for sub_id, query in (("summary", "queue.summary"), ("entries", "queue.event")):
            frame: dict[str, Any] = {"type": "subscribe", "id": sub_id, "query": query}
            frame["args"] = {"event_id": self.event_id}
            if self.cursors[sub_id] is not None:
                frame["after"] = self.cursors[sub_id]
            await self.ws.send(json.dumps(frame))

    def apply(self, frame: dict[str, Any]) -> None:
        assert frame["type"] in ("snapshot", "change"), frame
        view = self.views[frame["id"]]
        key = "event_id" if frame["id"] == "summary" else "entry_id"
        previous = self.cursors[frame["id"]]
        assert previous is None or frame["cursor"] >= previous, "frames must come in cursor order"
        if frame["type"] == "snapshot":
            view.clear()
            view.update({row[key]: row for row in frame["rows"]})
        elif frame["op"] == "upsert":
            view[frame["key"]] = frame["row"]
        else:
            view.pop(frame["key"], None)
        self.cursors[frame["id"]] = frame["cursor"]

    async def drain(self, quiet: float = 0.3) -> None:
        try:
            while True:
                self.apply(await recv(self.ws, timeout=quiet))
        except TimeoutError:
            pass

    async def converge(self, summary: dict[str, Any], entries: list[dict[str, Any]]) -> None:
        wanted = {"summary": {self.event_id: summary}, "entries": {row["entry_id"]: row for row in entries}}
        while self.views != wanted:
            self.apply(await recv(self.ws))


def test_views_rebuilt_from_frames_equal_the_read_model(server: LineupServer) -> None:
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    @given(steps=steps)
    def run(steps: list[Step]) -> None:
        event_id = f"hyp-{uuid.uuid4().hex[:10]}"
        headers = server.headers("owner")
        assert httpx.post(f"{server.base_url}/events/{event_id}/queue", json={"name": "H"}, headers=headers).is_success

        async def scenario() -> None:
            follower = Follower(server, event_id)
            await follower.connect()
            connected = True
            for action, user in steps:
                if action == "toggle":
                    if connected:
                        await follower.drain()  # what has arrived: the resume starts from real cursors
                        await follower.ws.close()  # commands from now on are missed until the resume
                    else:
                        await follower.connect()
                    connected = not connected
                    continue
                httpx.post(f"{server.base_url}/events/{event_id}/queue/{action}", headers=server.headers(user))
            if not connected:
                await follower.connect()
            summary = httpx.get(f"{server.base_url}/events/{event_id}/queue/summary", headers=headers).json()
            entries = httpx.get(f"{server.base_url}/events/{event_id}/queue", headers=headers).json()
            await follower.converge(summary, entries)
            await follower.ws.close()

        asyncio.run(scenario())

    run()
