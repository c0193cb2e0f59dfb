"""`lineup serve` with several worker processes, each on its own SO_REUSEPORT socket.

uvicorn's own multi-worker mode shares one listening socket, and with keep-alive clients the
first worker to accept takes most connections (measured: 87 % / 13 % CPU over 2 workers).
Separate SO_REUSEPORT sockets let the kernel spread connections evenly over the workers.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from typing import Any

import uvicorn

from adapters.gateway import close_all_sessions
from entrypoints.projector_process import RESTART_PAUSE, ProjectorProcess, stop_processes
from entrypoints.settings import Settings

log = logging.getLogger("lineup")
# WebSocket heartbeat: uvicorn pings every socket every 20 s and drops (1011) one that has not answered
# within LINEUP_WS_PING_TIMEOUT. The ping goes straight to the transport, past the session's outbox,
# but behind what the kernel and the transport already hold for that client (up to tcp_wmem's maximum,
# 4 MiB by default, plus 64 KiB and one frame). So the timeout is generous (60 s by default): a slow
# client that still reads answers in time and is not cut off; one that reads nothing for that long is
# treated as dead. uvicorn's default of 20 s dropped slow readers whose pong was stuck behind a backlog.
WS_PING_INTERVAL = 20.0


def server_config(app: Any, log_level: str, ws_ping_timeout: float, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for every `lineup serve` process, one worker or several."""
    return uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
        proxy_headers=False,  # nothing reads the client address; saves work per request
        # The protocol adapters/direct_frames.py writes change frames through, named rather than
        # left to "auto". No permessage-deflate: change frames are a few hundred bytes of JSON, and
        # with compression every connection keeps its own zlib streams (uvicorn's settings: 12-bit
        # windows, memLevel 5, i.e. ~16 KiB + 16 KiB for the compressor alone by zlib's own formula)
        # and needs each frame compressed for it alone, so one change could not be one write of the
        # same bytes to every subscriber.
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_ping_interval=WS_PING_INTERVAL,
        ws_ping_timeout=ws_ping_timeout,
        **options,
    )


class GracefulServer(uvicorn.Server):
    """uvicorn's Server, except that after a graceful shutdown on SIGTERM/SIGINT it returns
    instead of re-raising the signal, so `lineup serve` finishes its own clean-up and exits 0."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await close_all_sessions()  # 1001 to WebSocket clients, before uvicorn drops them with 1012
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(env: dict[str, str], host: str, port: int, log_level: str) -> None:
    """Runs in a child process: its own container, app and socket."""
    os.environ.update(env)
    config = server_config("entrypoints.asgi:worker_app", log_level, Settings.from_env().ws_ping_timeout, factory=True)
    GracefulServer(config).run(sockets=[_listening_socket(host, port)])


class PortUnavailableError(ValueError):
    """`lineup serve` cannot listen where it was told to."""


def check_port(host: str, port: int) -> None:
    """Fail fast, before starting anything, when the address cannot be bound."""
    try:
        _listening_socket(host, port).close()
    except OSError as error:
        msg = f"cannot listen on {host}:{port}: {error.strerror or error}"
        raise PortUnavailableError(msg) from None


def run_workers(count: int, env: dict[str, str], host: str, port: int, log_level: str) -> None:
    """Start `count` workers and keep them running until SIGTERM or SIGINT, then stop them all."""
    context = multiprocessing.get_context("spawn")
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    workers: list[BaseProcess] = []
    projector = ProjectorProcess(env)

    def start() -> BaseProcess:
        process = context.Process(target=_worker, args=(env, host, port, log_level), name="lineup-worker")
        process.start()
        return process

    try:
        workers = [start() for _ in range(count)]
        log.info("started %d workers: %s", count, ", ".join(str(w.pid) for w in workers))
        projector.start()
        while not stopping.wait(RESTART_PAUSE):
            for index, process in enumerate(workers):
                if not process.is_alive():
                    log.error("worker %s exited with %s; starting a new one", process.pid, process.exitcode)
                    workers[index] = start()
    finally:
        projector.stop()
        stop_processes(workers)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
