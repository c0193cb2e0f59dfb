"""The fan-out baseline: a bare `websockets` server in its own process that broadcasts one frame on request.

    proc = BareServer.start("127.0.0.1")      # listening; proc.port, proc.pid
    t0_ns, t1_ns, sockets = proc.broadcast(frame)
    proc.stop()

`websockets.asyncio.server.serve` with compression off and no keepalive pings, on uvloop when installed
(`lineup serve` runs uvicorn on uvloop too). On `broadcast` the process takes `time.time_ns()`, calls
`websockets.broadcast(connections, frame)` and answers (t0, time after the call, recipients).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import signal
import time
from typing import Any


async def _serve(pipe: Any, host: str) -> None:
    from websockets import broadcast
    from websockets.asyncio.server import serve

    loop = asyncio.get_running_loop()
    connections: set[Any] = set()

    async def handler(ws: Any) -> None:
        connections.add(ws)
        try:
            await ws.wait_closed()
        finally:
            connections.discard(ws)

    async with serve(handler, host, 0, compression=None, ping_interval=None, backlog=4096) as server:
        pipe.send(server.sockets[0].getsockname()[1])
        while True:
            command, frame = await loop.run_in_executor(None, pipe.recv)
            if command == "broadcast":
                started = time.time_ns()
                broadcast(connections, frame)
                pipe.send((started, time.time_ns(), len(connections)))
            else:
                server.close()
                pipe.send("stopped")
                return


def bare_main(pipe: Any, host: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    try:
        import uvloop

        uvloop.run(_serve(pipe, host))
    except ImportError:
        asyncio.run(_serve(pipe, host))


class BareServer:
    def __init__(self, process: Any, pipe: Any, port: int) -> None:
        self.process, self.pipe, self.port = process, pipe, port

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @classmethod
    def start(cls, host: str) -> BareServer:
        context = mp.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=bare_main, args=(child, host), daemon=True, name="bare-ws-server")
        process.start()
        if not parent.poll(60):
            process.kill()
            msg = "the bare websockets server did not start within 60 s"
            raise RuntimeError(msg)
        return cls(process, parent, parent.recv())

    def broadcast(self, frame: str) -> tuple[int, int, int]:
        self.pipe.send(("broadcast", frame))
        if not self.pipe.poll(120):
            msg = "the bare server did not answer a broadcast within 120 s"
            raise RuntimeError(msg)
        return self.pipe.recv()  # type: ignore[no-any-return]

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.process.is_alive():
                self.pipe.send(("stop", None))
                self.pipe.poll(10)
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.pipe.close()


def padded_frame(length: int) -> str:
    """A JSON text frame of exactly `length` characters (at least 30), shaped like a change frame."""
    head = '{"type":"change","id":1,"pad":"'
    return head + "x" * max(0, length - len(head) - 2) + '"}'
