"""The queue commands answered in front of Litestar (entrypoints/fast_paths.py, what `lineup serve`
answers with) give the answers their Litestar routes give: status, content type and JSON body, for
callers good and bad; and only requests with a verifying `Bearer` token skip Litestar.

Each path runs in-process over its own container on one database, request by request, on its own
event ids and users (their text is normalized before comparing, as are entry ids and times).
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from litestar.testing import TestClient

from entrypoints.auth import issue
from entrypoints.bootstrap import build
from entrypoints.fast_paths import FastPaths
from entrypoints.http import create_app

if TYPE_CHECKING:
    from collections.abc import Callable

    from entrypoints.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::litestar.exceptions.LitestarDeprecationWarning")


@dataclasses.dataclass
class ToLitestar:
    """The Litestar app, noting the path of every HTTP request that reaches it."""

    app: Any
    reached: list[str] = dataclasses.field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.reached.append(f"{scope['method']} {scope['path']}")
        await self.app(scope, receive, send)


def requests(run: str, secret: str) -> list[tuple[str, str, dict[str, str], bytes]]:
    """(method, path, headers, body): a queue's life through the entry commands, bad callers included."""
    queue, elsewhere = f"/events/{run}-ev/queue", f"/events/{run}-none/queue"

    def bearer(user: str, role: str = "user") -> dict[str, str]:
        return {"Authorization": f"Bearer {issue(secret, f'{run}-{user}', role=role)}"}

    admin = jwt.encode({"sub": f"{run}-x", "role": "admin", "exp": 4_000_000_000}, secret, algorithm="HS256")
    expired = jwt.encode({"sub": f"{run}-x", "exp": 1_000_000_000}, secret, algorithm="HS256")
    odd = jwt.encode({"sub": f"{run}-x", "role": "user", "extras": "x"}, secret, algorithm="HS256")
    plain = issue(secret, f"{run}-u3")
    return [
        ("POST", queue, {**bearer("owner"), "Content-Type": "application/json"}, b'{"name": "Launch"}'),
        ("POST", f"{queue}/join", bearer("u1"), b""),
        ("POST", f"{queue}/join", bearer("u1"), b""),  # already waiting: 200
        ("POST", f"{queue}/join", bearer("u2"), b'{"ignored": true}'),
        ("POST", f"{queue}/join", {}, b""),
        ("POST", f"{queue}/join", {"Authorization": "Bearer not-a-token"}, b""),
        ("POST", f"{queue}/join", {"Authorization": f"Bearer {admin}"}, b""),
        ("POST", f"{queue}/join", {"Authorization": f"Bearer {expired}"}, b""),
        ("POST", f"{queue}/join", {"Authorization": f"Bearer {odd}"}, b""),  # signed, but `extras` no object
        ("POST", f"{queue}/join", {"Authorization": f"Token {plain}"}, b""),  # Litestar reads any scheme
        ("POST", f"{elsewhere}/join", bearer("u1"), b""),
        ("POST", f"{queue}/call-next", bearer("u1"), b""),  # not the owner
        ("POST", f"{queue}/call-next", bearer("owner"), b""),
        ("POST", f"{queue}/leave", bearer("u2"), b""),
        ("POST", f"{queue}/leave", bearer("u2"), b""),  # no longer in the queue
        ("POST", f"{queue}/call-next", bearer("ops", role="service"), b""),
        ("POST", f"{queue}/call-next", bearer("owner"), b""),  # nobody waiting
        ("POST", f"{queue}/join/", bearer("u4"), b""),
        ("GET", f"{queue}/join", bearer("u1"), b""),
        ("POST", f"{elsewhere}/leave", bearer("u1"), b""),
    ]


def normalized(run: str, body: Any) -> Any:
    if isinstance(body, dict):
        return {
            key: "<varies>" if key in ("entry_id", "estimated_time") else normalized(run, value)
            for key, value in body.items()
        }
    if isinstance(body, list):
        return [normalized(run, value) for value in body]
    return re.sub(re.escape(run), "<run>", body) if isinstance(body, str) else body


def answers(settings: Settings, run: str, wrap: Callable[[Any, Any], Any]) -> tuple[list[Any], ToLitestar]:
    container = build(settings)
    container.start()
    litestar = ToLitestar(create_app(container))
    with TestClient(wrap(litestar, container)) as client:  # its shutdown closes the container
        answered = []
        for method, path, headers, body in requests(run, container.jwt_secret):
            response = client.request(method, path, headers=headers, content=body)
            answered.append(
                (response.status_code, response.headers.get("content-type"), normalized(run, response.json()))
            )
    return answered, litestar


def test_entry_commands_answer_in_front_as_their_routes_do(settings: Settings) -> None:
    route, _ = answers(settings, "route", lambda app, _: app)
    fast, litestar = answers(settings, "fast", FastPaths)
    assert [status for status, _, _ in fast] == [
        201, 201, 200, 201, 401, 401, 401, 401, 401, 201, 404, 403, 200, 200, 404, 200, 409, 201, 405, 404,
    ]  # fmt: skip
    assert fast == route
    assert all(content_type == "application/json" for _, content_type, _ in fast)
    skipped = {"POST /events/fast-ev/queue/join", "POST /events/fast-ev/queue/leave"}
    skipped |= {"POST /events/fast-ev/queue/call-next", "POST /events/fast-none/queue/join"}
    skipped |= {"POST /events/fast-none/queue/leave"}
    reached = set(litestar.reached)
    assert "POST /events/fast-ev/queue" in reached  # no fast path for opening
    assert "POST /events/fast-ev/queue/join/" in reached
    assert "GET /events/fast-ev/queue/join" in reached
    # with a verifying Bearer token the commands skip Litestar; the refused or unusual tokens reach it
    assert litestar.reached.count("POST /events/fast-ev/queue/join") == 6
    assert not reached & (skipped - {"POST /events/fast-ev/queue/join"})
