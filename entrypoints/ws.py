"""`GET /ws`: the live gateway's route; the protocol itself lives in adapters/gateway.py."""

from __future__ import annotations

from typing import Any

from litestar import WebSocket, websocket
from litestar.exceptions import NotAuthorizedException

from adapters.gateway import AuthError, Identity, Session
from entrypoints.auth import decode
from entrypoints.bootstrap import Container


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
    await Session(socket, container.hub, container.feed_reader, verify, container.caught_up).run()
