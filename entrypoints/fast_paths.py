"""In front of Litestar: the Stripe webhook and the commonest queue commands answered here, and every
HTTP answer written in one piece.

Measured with scripts/bench/webhooks.py (one worker, 32 senders): answering
`POST /api/webhooks/stripe-connect` here, before Litestar's router, middleware, request and
response objects, raised accepted webhooks/s by about half, because a webhook's own work (verify,
hand to the group committer) is small and the server runs on one GIL beside the projectors. The
answer itself comes from the same function as the Litestar route (`stripe_api.accept_webhook`),
with the same body limit and the same JSON errors; every other request, other methods on this
path included, goes to Litestar (its answer written as below).

Every HTTP answer leaves in one write, the webhook's and Litestar's alike. uvicorn writes a
response's head when it is started and its body when it is sent, two `send` calls on the loopback
socket per answer; `JoinedSend` stands in for uvicorn's transport from the head to the first body
part and joins them, while uvicorn's own state, keep-alive and `Connection: close` handling run
unchanged. Measured alternating (1 worker, docs/benchmarks.md): webhooks, 32 senders, four pairs,
~13 % more accepted per second on average; joins (scripts/bench/commands.py), three pairs, 1,077 /
1,029 / 881 joins/s against 978 / 1,007 / 773.

`POST /events/{event_id}/queue/join`, `/leave` and `/call-next` (no body; an entry answered) are
answered here too, with the functions their Litestar routes use (`http.ENTRY_COMMANDS`) and the same
JSON errors, when the request carries a `Bearer` token that verifies (`LineupToken.decode`, as the
JWT middleware does) for a known role; any other request, a missing or refused token included, goes
to Litestar, which answers it as before. At 1,000 commands/s Litestar's request handling was ~30 % of
the HTTP process's GIL time beside the token check (py-spy); answering join and leave here (with the
plain token path) took ~15 % off that process's CPU and about halved the summary frames' wait for the
event loop (p99 9-14 ms against 18-36 ms; docs/benchmarks.md, 2026-12-07).
tests/integration/test_fast_paths.py checks both paths answer alike.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.exceptions import NotAuthorizedException

from domain.errors import QueueError
from entrypoints.auth import LineupToken, caller_from
from entrypoints.errors import UNEXPECTED, error_body, queue_error_answer
from entrypoints.http import ENTRY_COMMANDS, MAX_BODY
from entrypoints.stripe_api import accept_webhook

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from domain.commands import Caller
    from entrypoints.bootstrap import Container

    Scope = dict[str, Any]
    Receive = Callable[[], Awaitable[dict[str, Any]]]
    Send = Callable[[dict[str, Any]], Awaitable[None]]

log = logging.getLogger("lineup.http")
PATH = "/api/webhooks/stripe-connect"
_encode = msgspec.json.Encoder().encode
TOO_LARGE = error_body("too_large", "Request Entity Too Large")  # as Litestar answers every other path
ENTRY_COMMAND = re.compile(r"/events/([^/]+)/queue/(" + "|".join(map(re.escape, ENTRY_COMMANDS)) + ")")
BEARER = "Bearer "


class FastPaths:
    """ASGI: POST to the webhook path, and the entry commands of callers with a valid token, are
    answered here; everything else goes to `app`; every HTTP answer is sent through `JoinedSend`."""

    def __init__(self, app: Callable[..., Awaitable[None]], container: Container) -> None:
        self.app, self.container = app, container

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        joined = JoinedSend(send)
        try:
            if scope["method"] != "POST":
                await self.app(scope, receive, joined)
            elif scope["path"] == PATH:
                await self._webhook(scope, receive, joined)
            elif not await self._entry_command(scope, joined):
                await self.app(scope, receive, joined)
        finally:
            joined.finish()

    async def _entry_command(self, scope: Scope, send: Send) -> bool:
        """Answer one of `ENTRY_COMMANDS` for a caller whose token verifies; False (nothing sent) for
        any other request, which Litestar then answers."""
        command = ENTRY_COMMAND.fullmatch(scope["path"])
        caller = self._caller(scope) if command is not None else None
        if command is None or caller is None:
            return False
        status: int
        answer: object
        try:
            status, answer = await ENTRY_COMMANDS[command[2]](self.container, command[1], caller)
        except QueueError as error:
            status, answer = queue_error_answer(error)
        except Exception:  # as entrypoints.errors.unexpected_error answers it
            log.exception("unhandled error on POST %s", scope["path"])
            status, answer = 500, UNEXPECTED
        await _answer(send, status, answer)
        return True

    def _caller(self, scope: Scope) -> Caller | None:
        """Who the request's `Bearer` token names, as Litestar's JWT middleware would find; None when
        there is no such token or it is refused (Litestar then answers with its 401)."""
        header = _header(scope, b"authorization")
        if header is None or not header.startswith(BEARER):
            return None
        try:
            return caller_from(LineupToken.decode(header[len(BEARER) :], self.container.jwt_secret, "HS256"))
        except NotAuthorizedException:
            return None

    async def _webhook(self, scope: Scope, receive: Receive, send: Send) -> None:
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
            status, answer = 500, UNEXPECTED
        await _answer(send, status, answer)


async def _answer(send: Send, status: int, answer: object) -> None:
    content = _encode(answer)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


class JoinedSend:
    """An ASGI `send` over uvicorn's that writes a response's head together with its first body
    part. From the head until that part is sent, uvicorn's transport is stood in for by `OneWrite`
    (installed only then, so that a `100 Continue` uvicorn writes while the body is read is not
    held back); later parts go out as uvicorn writes them. Without uvicorn's cycle (`send` is its
    bound method) it passes messages through. The caller calls `finish()` when the app is done: it
    puts uvicorn's transport back (and sends what it holds) whatever happened."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._cycle: Any = getattr(send, "__self__", None)  # uvicorn's RequestResponseCycle
        self._transport = getattr(self._cycle, "transport", None)
        self._one: OneWrite | None = None
        if self._transport is not None and not callable(getattr(self._transport, "write", None)):
            self._transport = None

    async def __call__(self, message: dict[str, Any]) -> None:
        if self._transport is not None and message["type"] == "http.response.start" and self._one is None:
            self._one = self._cycle.transport = OneWrite(self._transport)
        try:
            await self._send(message)
        finally:
            if message["type"] == "http.response.body":
                self.finish()

    def finish(self) -> None:
        one, self._one = self._one, None  # once: later body parts go out as uvicorn writes them
        if one is not None:
            self._cycle.transport = self._transport
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
