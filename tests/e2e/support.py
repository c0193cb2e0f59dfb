"""Helpers the end-to-end tests share: ids, polling with a deadline, the error shape, a `/ws` session."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from tests.e2e.conftest import LineupServer

T = TypeVar("T")
DEADLINE = 10.0  # seconds an asynchronous effect (processing, projection) may take to show


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def eventually(check: Callable[[], T], deadline: float = DEADLINE) -> T:
    """`check()`'s value once it stops raising AssertionError; the last failure after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > end:
                raise
        time.sleep(0.05)


def present(value: T | None) -> T:
    """`value` when it is there (not None, not empty): for `eventually`."""
    assert value, value
    return value


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The contract's error shape: JSON with exactly `error` and `detail`, never a stack trace."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert "Traceback" not in response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == code, body
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return dict(body)


def ws_url(server: LineupServer) -> str:
    return server.base_url.replace("http://", "ws://") + "/ws"


async def recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    assert isinstance(frame, dict)
    return frame


async def connect(server: LineupServer, user: str, role: str = "user") -> ClientConnection:
    """A socket authenticated as `user` (after its `ready`)."""
    ws = await websockets.connect(ws_url(server))
    await ws.send(json.dumps({"type": "auth", "token": server.token(user, role=role)}))
    ready = await recv(ws)
    assert ready["type"] == "ready", ready
    assert isinstance(ready["cursor"], int), ready
    return ws
