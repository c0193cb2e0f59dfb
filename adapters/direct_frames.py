"""WebSocket text frames written straight to uvicorn's transport: the fan-out's per-recipient path.

A change goes to every subscriber of its query, often thousands of sockets. Through ASGI each
recipient costs a message dict, the server's `send` coroutine and websockets' frame serializer,
before the one `transport.write` that matters. Here the frame is serialized once (server frames
are unmasked, so the bytes are the same for every connection without extensions) and written to
each transport directly, only when uvicorn's own `send` would write it at once: nothing was sent
to close the connection, its transport holds no unsent bytes (so it is not paused by a slow
reader) and is not closing, and it negotiated no extension (permessage-deflate makes every
connection's bytes its own). Otherwise `DirectWriter.write` answers False and the caller goes
through ASGI as before.

This reads uvicorn's `websockets-sansio` protocol (`lineup serve` selects it explicitly), found
as the bound ASGI `send` of the connection. With another server, or if a uvicorn release renames
what is read here, `DirectWriter.of` finds nothing and every frame takes the ASGI path
(tests/integration/test_direct_frames.py checks both, against the real server).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


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
        all(hasattr(protocol, name) for name in ("close_sent", "transport"))
        and conn is not None
        and hasattr(conn, "extensions")
    )


class DirectWriter:
    """Writes a connection's text frames to its transport when uvicorn would write them at once."""

    __slots__ = ("_protocol", "_transport")

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol
        self._transport = protocol.transport

    @classmethod
    def of(cls, send: Any) -> DirectWriter | None:
        """The writer behind an accepted connection's ASGI `send`; None when it is not uvicorn's
        websockets-sansio, or when the connection negotiated an extension (then every connection's
        bytes are its own).

        The server's `send` is a bound method of its protocol; a framework may hand the app a
        wrapper around it (Litestar's WebSocket does: a closure that checks its connection state,
        which `write` checks on the protocol itself), so wrappers' closures are looked through."""
        for _ in range(MAX_WRAPPERS + 1):
            protocol = getattr(send, "__self__", None)
            if isinstance(protocol, WebSocketsSansIOProtocol):
                return cls(protocol) if _readable(protocol) and not protocol.conn.extensions else None
            inner = [cell.cell_contents for cell in getattr(send, "__closure__", None) or () if _is_send(cell)]
            if len(inner) != 1:
                return None
            send = inner[0]
        return None

    def write(self, text: str) -> bool:
        """True: the frame was written. False: nothing was; send it through ASGI.

        This runs once per recipient of a change, so it reads the least that decides it. uvicorn's
        `send` writes at once when its `writable` event is set (the transport is not paused), the
        connection is not lost and no close frame was sent; then websockets' connection is open
        (the peer's close frame closes the transport in the same callback that parses it, and so
        does a protocol error). An empty write buffer implies the transport is not paused (it
        resumes its protocol when the buffer drains), and a lost connection's transport is
        closing. A frame behind buffered bytes takes the ASGI path, which appends it in order."""
        transport = self._transport
        if self._protocol.close_sent or transport.get_write_buffer_size() or transport.is_closing():
            return False
        last = _last
        if text is not last.text:
            last.wire = text_frame(text.encode())
            last.text = text
        transport.write(last.wire)
        return True
