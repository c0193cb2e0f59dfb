"""The HTTP floor: a bare ASGI app on uvicorn, as `lineup serve` runs it, that only answers.

    floor = Floor.start("127.0.0.1", port)    # listening when it returns
    ...                                        # drive it like the real server
    floor.stop()

It reads each request's body and answers 200 with a small JSON body: no framework, no signature check,
no database. The same senders driving it and `lineup serve` in one run show what this machine's HTTP
stack, the senders and the scheduling of both on the shared cores cost by themselves; a latency
target below the floor's latency cannot be met by any work the server does. One uvicorn process with
httptools and uvloop (what `lineup serve` uses), no access log.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import time
from typing import Any

ANSWER = b'{"received":true}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:  # the whole body, as any real endpoint must read it
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": ANSWER})


def _serve(host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, loop="uvloop", http="httptools", access_log=False, log_level="warning")


class Floor:
    def __init__(self, process: mp.process.BaseProcess, port: int) -> None:
        self.process, self.port = process, port

    @classmethod
    def start(cls, host: str, port: int, timeout: float = 30.0) -> Floor:
        process = mp.get_context("spawn").Process(target=_serve, args=(host, port), daemon=True)
        process.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((host, port), timeout=1.0):
                    return cls(process, port)
            except OSError:
                time.sleep(0.1)
        process.kill()
        msg = f"the HTTP floor server did not listen on {host}:{port} within {timeout:g} s"
        raise RuntimeError(msg)

    @property
    def pid(self) -> int:
        return int(self.process.pid or 0)

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
