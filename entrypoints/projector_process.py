"""`lineup serve`'s projector process: the projections, the Stripe process and the publishers run
beside the HTTP process(es), not in them.

In one process they shared the GIL with the HTTP event loop: every statement of a projection
round gave the GIL up and waited up to the 5 ms switch interval to get it back while the loop was
busy, so a summary frame trailed its command by tens of milliseconds under load (measured at
1,000 commands/s offered: commit -> socket p50 80-96 ms in one process, 30 ms with a separate
one). The HTTP processes only follow the progress channel (read-your-writes). Election is
unchanged: the advisory lock still picks one projecting process per database, so two `lineup
serve` on one database still project once, and one takes over when the other dies.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from typing import TYPE_CHECKING

from entrypoints.heap import freeze_startup_heap
from entrypoints.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Sequence
    from multiprocessing.process import BaseProcess

log = logging.getLogger("lineup")
RESTART_PAUSE = 1.0  # seconds between checks of the child (and before a restart)
ORPHAN_CHECK = 0.5  # seconds: how soon the child notices that its parent died (kill -9)
STOP_TIMEOUT = 15.0


def stop_processes(processes: Sequence[BaseProcess]) -> None:
    """SIGTERM to every live one, then wait for each (SIGKILL after `STOP_TIMEOUT`): serve's
    projector process and its HTTP workers stop the same way."""
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    for process in processes:
        process.join(timeout=STOP_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join(timeout=STOP_TIMEOUT)


def run(env: dict[str, str], parent: int) -> None:
    """The child: projects until SIGTERM or until its parent (pid `parent`, passed in: it may die
    before this child has even started) is gone."""
    from entrypoints.bootstrap import build
    from entrypoints.cli import configure_logging

    os.environ.update(env)
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent stops us
    container = build(settings)
    freeze_startup_heap()
    try:
        if container.projector is not None:
            container.projector.start()
        while not stop.wait(ORPHAN_CHECK):
            if os.getppid() != parent:  # the serving process died without stopping us (kill -9)
                log.warning("lineup serve (pid %d) is gone; the projector process stops", parent)
                break
    finally:
        container.close()


class ProjectorProcess:
    """Starts the child, starts it again if it dies, and stops it (SIGTERM, then SIGKILL)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._context = multiprocessing.get_context("spawn")
        self._process: BaseProcess | None = None
        self._stopping = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="lineup-projector-supervisor", daemon=True)

    def start(self) -> None:
        self._process = self._spawn()
        self._supervisor.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor.is_alive():
            self._supervisor.join(timeout=STOP_TIMEOUT)
        if self._process is not None:
            stop_processes([self._process])

    def _spawn(self) -> BaseProcess:
        process = self._context.Process(target=run, args=(self.env, os.getpid()), name="lineup-projector", daemon=False)
        process.start()
        log.info("projector process started: pid %s", process.pid)
        return process

    def _supervise(self) -> None:
        while not self._stopping.wait(RESTART_PAUSE):
            process = self._process
            if process is not None and not process.is_alive() and not self._stopping.is_set():
                log.error("projector process %s exited with %s; starting a new one", process.pid, process.exitcode)
                self._process = self._spawn()
