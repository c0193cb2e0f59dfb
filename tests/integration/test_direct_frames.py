"""Change frames written straight to uvicorn's transport (adapters/direct_frames.py), against the real
server: uvicorn configured as `lineup serve` configures it, a Litestar WebSocket route, and a
`websockets` client on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
import websockets
from hypothesis import given
from hypothesis import strategies as st
from litestar import Litestar, WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect
from websockets.frames import Frame, Opcode

from adapters.direct_frames import DirectWriter, text_frame
from entrypoints.workers import server_config


@given(st.binary(max_size=70_000) | st.sampled_from([125, 126, 65_535, 65_536]).map(lambda n: b"x" * n))
def test_a_text_frame_is_what_websockets_serializes_for_a_server(payload: bytes) -> None:
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert text_frame(payload) == expected


def _app(outcomes: list[tuple[bool, bool]]) -> Litestar:
    @websocket("/frames")
    async def frames(socket: WebSocket[Any, Any, Any]) -> None:
        await socket.accept()
        writer = DirectWriter.of(socket.send)
        written = writer is not None and writer.write('{"n":1,"frame":"' + "é" * 200 + '"}')
        outcomes.append((writer is not None, written))
        if not written:
            await socket.send_text("through ASGI")
        await socket.send_text("after")  # a frame through ASGI behind a direct one stays in order
        await socket.receive_text()

    return Litestar([frames])


@contextlib.asynccontextmanager
async def _serving(config: uvicorn.Config) -> AsyncIterator[int]:
    """A real uvicorn on 127.0.0.1 for the block: its port; stopped after it."""
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), "uvicorn stopped before it started"
            await asyncio.sleep(0.01)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)


async def _exchange(*, server_deflates: bool) -> tuple[list[tuple[bool, bool]], list[Any]]:
    """One connection of a client that offers permessage-deflate; what the route saw and what arrived."""
    outcomes: list[tuple[bool, bool]] = []
    if server_deflates:  # uvicorn's default, with the protocol serve names
        config = uvicorn.Config(_app(outcomes), host="127.0.0.1", port=0, ws="websockets-sansio", log_level="warning")
    else:
        config = server_config(_app(outcomes), "warning", 20.0, host="127.0.0.1", port=0)
    async with (
        _serving(config) as port,
        websockets.connect(f"ws://127.0.0.1:{port}/frames", compression="deflate") as client,
    ):
        received = [await asyncio.wait_for(client.recv(), 5), await asyncio.wait_for(client.recv(), 5)]
        await client.send("bye")
    return outcomes, received


def test_under_serve_s_configuration_frames_go_straight_to_the_transport_even_if_a_client_asks_for_deflate() -> None:
    outcomes, received = asyncio.run(_exchange(server_deflates=False))
    assert outcomes == [(True, True)]  # found through Litestar's wrapper; permessage-deflate is off
    assert received == ['{"n":1,"frame":"' + "é" * 200 + '"}', "after"]


def test_a_connection_that_negotiated_deflate_is_written_through_asgi() -> None:
    outcomes, received = asyncio.run(_exchange(server_deflates=True))
    assert outcomes == [(False, False)]  # its bytes are its own: there is no direct path
    assert received == ["through ASGI", "after"]


def test_a_send_that_is_not_uvicorns_finds_no_writer() -> None:
    async def send(message: dict[str, Any]) -> None:  # another server's, or a middleware's own
        del message

    def wrapper(inner: Any) -> Any:
        async def wrapped(message: dict[str, Any]) -> None:
            await inner(message)

        return wrapped

    assert DirectWriter.of(send) is None
    assert DirectWriter.of(wrapper(wrapper(send))) is None
    assert DirectWriter.of(None) is None


def _states_app(outcomes: list[bool], big: str) -> Litestar:
    @websocket("/states")
    async def states(socket: WebSocket[Any, Any, Any]) -> None:
        await socket.accept()
        writer = DirectWriter.of(socket.send)
        assert writer is not None
        outcomes.append(writer.write(big))  # more than the socket buffers take: the rest waits in the transport
        behind = writer.write('{"n":2}')  # must not jump the queue, nor be written behind uvicorn's back
        outcomes.append(behind)
        if not behind:
            await socket.send_text('{"n":2}')  # through ASGI: waits until the client has read `big`
        with contextlib.suppress(WebSocketDisconnect):
            await socket.receive_text()  # the client's close
        outcomes.append(writer.write('{"n":3}'))  # the connection is closing: nothing may be written

    return Litestar([states])


def test_a_frame_behind_buffered_bytes_or_after_the_peer_closed_is_not_written_directly() -> None:
    big = '{"n":1,"pad":"' + "x" * (16 << 20) + '"}'

    async def scenario() -> tuple[list[bool], list[Any]]:
        outcomes: list[bool] = []
        config = server_config(_states_app(outcomes, big), "warning", 20.0, host="127.0.0.1", port=0)
        async with _serving(config) as port:
            async with websockets.connect(f"ws://127.0.0.1:{port}/states", max_size=None) as client:
                received = [await asyncio.wait_for(client.recv(), 20), await asyncio.wait_for(client.recv(), 5)]
            for _ in range(100):
                if len(outcomes) == 3:
                    break
                await asyncio.sleep(0.02)
        return outcomes, received

    outcomes, received = asyncio.run(scenario())
    assert outcomes == [True, False, False]
    assert received == [big, '{"n":2}']  # in order, each once
