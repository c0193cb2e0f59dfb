"""WebSocket text frames written straight to uvicorn's transport: the fan-out's per-recipient path.

A change goes to every subscriber of its query, often thousands of sockets. Through ASGI each
recipient costs a message dict, the server's `send` coroutine and websockets' frame serializer,
before the one `transport.write` that matters. Here the frame is serialized once (server frames
are unmasked, so the bytes are the same for every connection without extensions) and written to
each transport directly, when and only when uvicorn's own `send` would write it at once: the
connection is open, nothing was sent to close it, its transport is not paused (a slow reader) or
closing, and it negotiated no extension (permessage-deflate makes every connection's bytes its
own). Otherwise `DirectWriter.write` answers False and the caller goes through ASGI as before.

This reads uvicorn's `websockets-sansio` protocol (`lineup serve` selects it explicitly), found
as the bound ASGI `send` of the connection. With another server, or if a uvicorn release renames
what is read here, `DirectWriter.of` finds nothing and every frame takes the ASGI path
(tests/integration/test_direct_frames.py checks both, against the real server).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

OPEN = State.OPEN


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame (RFC 6455 §5.2), as websockets' server side serializes it."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 1 << 16:
        return b"\x81\x7e" + length.to_bytes(2, "big") + payload
    return b"\x81\x7f" + length.to_bytes(8, "big") + payload


class _LastFrame:
    """The last text serialized, by identity: the fan-out hands the same string object to every
    subscriber that shares a subscription id, so consecutive recipients reuse its bytes."""

    __slots__ = ("text", "wire")

    def __init__(self) -> None:
        self.text: str | None = None
        self.wire = b""

    def wire_of(self, text: str) -> bytes:
        if text is not self.text:
            self.wire = text_frame(text.encode())
            self.text = text
        return self.wire


_last = _LastFrame()
MAX_WRAPPERS = 3


def _is_send(cell: Any) -> bool:
    try:
        content = cell.cell_contents
    except ValueError:  # an empty cell
        return False
    return callable(content) and (hasattr(content, "__closure__") or hasattr(content, "__self__"))


def _readable(protocol: WebSocketsSansIOProtocol) -> bool:
    """Whether this uvicorn still has everything `DirectWriter.write` reads."""
    conn = getattr(protocol, "conn", None)
    return (
        all(hasattr(protocol, name) for name in ("close_sent", "writable", "transport"))
        and conn is not None
        and all(hasattr(conn, name) for name in ("state", "extensions", "writes"))
    )


class DirectWriter:
    """Writes a connection's text frames to its transport when uvicorn would write them at once."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol

    @classmethod
    def of(cls, send: Any) -> DirectWriter | None:
        """The writer behind an ASGI `send`, or None when it is not uvicorn's websockets-sansio.

        The server's `send` is a bound method of its protocol; a framework may hand the app a
        wrapper around it (Litestar's WebSocket does: a closure that checks its connection state,
        which `write` checks on the protocol itself), so wrappers' closures are looked through."""
        for _ in range(MAX_WRAPPERS + 1):
            protocol = getattr(send, "__self__", None)
            if isinstance(protocol, WebSocketsSansIOProtocol):
                return cls(protocol) if _readable(protocol) else None
            inner = [cell.cell_contents for cell in getattr(send, "__closure__", None) or () if _is_send(cell)]
            if len(inner) != 1:
                return None
            send = inner[0]
        return None

    def write(self, text: str) -> bool:
        """True: the frame was written. False: nothing was; send it through ASGI."""
        protocol = self._protocol
        conn = protocol.conn
        if (
            protocol.close_sent
            or not protocol.writable.is_set()
            or conn.state is not OPEN
            or conn.extensions
            or conn.writes  # (uvicorn flushes after every operation: never expected)
            or protocol.transport.is_closing()
        ):
            return False
        protocol.transport.write(_last.wire_of(text))
        return True
