"""The Stripe webhook answered in front of Litestar: the one path where the framework was the cost.

Measured with scripts/bench/webhooks.py (one worker, 32 senders): answering
`POST /api/webhooks/stripe-connect` here, before Litestar's router, middleware, request and
response objects, raised accepted webhooks/s by about half, because a webhook's own work (verify,
hand to the group committer) is small and the server runs on one GIL beside the projectors. The
answer itself comes from the same function as the Litestar route (`stripe_api.accept_webhook`),
with the same body limit and the same JSON errors; every other request, other methods on this
path included, goes to Litestar unchanged.

The answer leaves in one write. uvicorn writes a response's head when it is started and its body
when it is sent, two `send` calls on the loopback socket per webhook; while this path sends its
answer, uvicorn's transport is stood in for by one that joins the two (`OneWrite`): uvicorn's own
state, keep-alive and `Connection: close` handling run unchanged. Measured alternating (1 worker,
32 senders, unpaced, four pairs): 1,295 / 1,258 / 1,197 / 1,398 accepted/s against 1,111 / 1,068 /
1,209 / 1,155, ~13 % more on average (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from entrypoints.errors import error_body
from entrypoints.http import MAX_BODY
from entrypoints.stripe_api import accept_webhook

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from entrypoints.bootstrap import Container

    Scope = dict[str, Any]
    Receive = Callable[[], Awaitable[dict[str, Any]]]
    Send = Callable[[dict[str, Any]], Awaitable[None]]

log = logging.getLogger("lineup.http")
PATH = "/api/webhooks/stripe-connect"
_encode = msgspec.json.Encoder().encode
TOO_LARGE = error_body("too_large", "Request Entity Too Large")  # as Litestar answers every other path
FAILED = error_body("internal_error", "the server failed to handle this request; it has been logged")


class StripeWebhookPath:
    """ASGI: POST to the webhook path is answered here; everything else goes to `app`."""

    def __init__(self, app: Callable[..., Awaitable[None]], container: Container) -> None:
        self.app, self.container = app, container

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        status: int
        answer: object
        try:
            body = await _body(scope, receive)
            if body is None:
                status, answer = 413, TOO_LARGE
            else:
                status, answer = await accept_webhook(self.container, body, _header(scope, b"stripe-signature"))
        except Exception:
            log.exception("unhandled error on POST %s", PATH)
            status, answer = 500, FAILED
        content = _encode(answer)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
        cycle: Any = getattr(send, "__self__", None)  # uvicorn's RequestResponseCycle, when send is its method
        transport = getattr(cycle, "transport", None)
        if cycle is None or transport is None or not callable(getattr(transport, "write", None)):
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
            return
        one = cycle.transport = OneWrite(transport)
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
        finally:
            cycle.transport = transport
            one.flush()


class OneWrite:
    """Stands in for a transport while one answer is sent: what is written goes out as one write,
    when the answer is done (`flush`) or before the connection is closed."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._parts.append(data)

    def flush(self) -> None:
        if self._parts:
            data = b"".join(self._parts)
            self._parts.clear()
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def _body(scope: Scope, receive: Receive) -> bytes | None:
    """The whole body, or None as soon as it is known to exceed MAX_BODY (declared or received)."""
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None
