"""A `lineup serve` subprocess for benchmarks, and CPU accounting of the processes involved (from /proc)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def lineup_executable() -> str:
    beside = Path(sys.executable).with_name("lineup")
    found = str(beside) if beside.exists() else shutil.which("lineup")
    if found is None:
        msg = "the `lineup` console script is not installed (pip install -e .)"
        raise RuntimeError(msg)
    return found


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path

    @classmethod
    def start(cls, *, database_url: str, schema: str, secret: str, host: str, port: int, workdir: Path) -> Server:
        env = {
            **os.environ,
            "LINEUP_DATABASE_URL": database_url,
            "LINEUP_DATABASE_SCHEMA": schema,
            "LINEUP_JWT_SECRET": secret,
            "LINEUP_HOST": host,
            "LINEUP_PORT": str(port),
            "LINEUP_DATA_DIR": str(workdir / "data"),
            "LINEUP_LOG_LEVEL": "warning",
        }
        log_path = workdir / "server.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen([lineup_executable(), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
        server = cls(process, host, port, log_path)
        server.wait_healthy()
        return server

    def request(
        self, method: str, path: str, token: str | None = None, body: Any = None, timeout: float = 10.0
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode(errors="replace")

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                msg = f"lineup serve exited with {self.process.returncode}:\n{self.log_tail()}"
                raise RuntimeError(msg)
            try:
                if self.request("GET", "/health", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        msg = f"lineup serve did not answer /health within {timeout:.0f} s:\n{self.log_tail()}"
        raise RuntimeError(msg)

    def metrics(self) -> dict[str, float]:
        status, text = self.request("GET", "/metrics")
        if status != 200 or not isinstance(text, str):
            return {}
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def stop(self) -> int | None:
        """SIGTERM (uvicorn shuts down gracefully), then SIGKILL after 20 s; only this one process."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode

    def logged_errors(self) -> list[str]:
        """The server log's ERROR lines (a projection that failed and retried logs one per attempt)."""
        try:
            return [line for line in self.log_path.read_text(errors="replace").splitlines() if " ERROR " in line]
        except OSError:
            return []

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def main_thread_sched(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of a process's main thread so far,
    from the scheduler's own accounting (/proc/PID/task/PID/schedstat, nanoseconds): the event loop
    of `lineup serve` and of the bare server, where a fan-out runs. (0, 0) if it is gone."""
    try:
        on_cpu, waiting, _ = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(on_cpu) / 1e9, int(waiting) / 1e9


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its direct children (the workers of `lineup serve`)."""
    total = process_cpu(pid)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(pid):
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                total += process_cpu(int(entry.name))
    return total


class PostgresCpu(dict[int, float]):
    """CPU seconds so far per postgres process (pid -> seconds). `later - earlier` is the CPU the processes
    alive at `later` used since `earlier` (all of it for those started since): a process that exited in
    between takes its CPU with it, so the difference is a lower bound, never the negative figure a
    difference of two sums gave when a busy backend ended within the window."""

    def __sub__(self, earlier: dict[int, float]) -> float:  # type: ignore[override]
        return sum(seconds - earlier.get(pid, 0.0) for pid, seconds in self.items())


def postgres_cpu() -> PostgresCpu:
    """CPU seconds used so far by every process named `postgres` on this machine (server and backends)."""
    found = PostgresCpu()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    found[int(entry.name)] = process_cpu(int(entry.name))
            except OSError:
                continue
    return found


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / CLOCK_TICKS, sum(values) / CLOCK_TICKS
