"""`GET /ws`: the live gateway's route; the protocol itself lives in adapters/gateway.py."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from litestar import WebSocket, websocket
from litestar.exceptions import NotAuthorizedException

from adapters.direct_frames import DirectWriter
from adapters.gateway import AuthError, Identity, Session
from entrypoints.auth import decode
from entrypoints.bootstrap import Container


class _Socket:
    """Litestar's WebSocket (accepted), except that frames go straight to the transport when uvicorn
    would write them at once (adapters/direct_frames.py), and otherwise to its ASGI `send` (skipping
    the `send_text` and `send_data` wrappers: two coroutines less per frame)."""

    __slots__ = ("socket", "write_now")

    def __init__(self, socket: WebSocket[Any, Any, Any]) -> None:
        self.socket = socket
        direct = DirectWriter.of(socket.send)
        self.write_now = None if direct is None else direct.write

    async def receive_text(self) -> str:
        return await self.socket.receive_text()

    def send_text(self, data: str) -> Coroutine[Any, Any, None]:
        return self.socket.send({"type": "websocket.send", "bytes": None, "text": data})  # type: ignore[return-value]

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await self.socket.close(code=code, reason=reason)


@websocket("/ws")
async def live(socket: WebSocket[Any, Any, Any], container: Container) -> None:
    """One connection, many subscriptions (see docs/protocol.md)."""

    def verify(token: str) -> Identity:
        try:
            caller, expires_at = decode(token, container.jwt_secret)
        except NotAuthorizedException as error:
            raise AuthError(str(error.detail)) from None
        return Identity(caller.user_id, caller.is_service, expires_at)

    await socket.accept()

    def settle(derived: bool) -> None:  # noqa: FBT001 - the gateway's callback
        container.caught_up(derived=derived)

    await Session(_Socket(socket), container.hub, container.feed_reader, verify, settle, container.snapshots).run()
