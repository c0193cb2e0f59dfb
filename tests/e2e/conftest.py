"""End-to-end fixtures: a real `lineup serve` subprocess on 127.0.0.1, one per test module."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from entrypoints.auth import issue
from entrypoints.settings import Settings

# The same secret as the shared `settings` fixture in tests/conftest.py (which is function-scoped,
# so a module-scoped server cannot depend on it).
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256"
LINEUP = Path(sys.executable).parent / "lineup"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LineupServer:
    """One `lineup serve` process; `restart()` keeps the port, schema and data dir."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        assert settings.jwt_secret is not None
        self.settings = settings
        self.secret: str = settings.jwt_secret
        self.port = settings.port
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LINEUP_", "STRIPE_"))}
        env.update(
            LINEUP_DATABASE_URL=str(self.settings.database_url),
            LINEUP_DATABASE_SCHEMA=self.settings.database_schema,
            LINEUP_JWT_SECRET=self.secret,
            LINEUP_PORT=str(self.port),
            LINEUP_HOST="127.0.0.1",
            LINEUP_DATA_DIR=str(self.settings.data_dir),
            LINEUP_LOG_LEVEL="warning",
            LINEUP_NOTIFICATION_TTL=str(self.settings.notification_ttl),
        )
        if self.settings.stripe_webhook_secrets:
            env["STRIPE_WEBHOOK_SECRET"] = ",".join(self.settings.stripe_webhook_secrets)
        return env

    def start(self) -> None:
        assert self.process is None, "already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n--- start #{self.starts} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(  # the child keeps its own copy of the log descriptor
                [str(LINEUP), "serve"], env=self.env(), stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_until_healthy()

    def _wait_until_healthy(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        last_error: object = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"lineup serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                response = httpx.get(f"{self.base_url}/health", timeout=1.0)
            except httpx.TransportError as error:
                last_error = error
            else:
                if response.status_code == 200:
                    return
                last_error = f"{response.status_code} {response.text}"
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"lineup serve did not answer /health within {START_TIMEOUT} s ({last_error}):\n{self.log()}")

    def stop(self) -> int | None:
        """SIGTERM, wait up to 10 s, then SIGKILL; returns the exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)
        return process.returncode

    def restart(self) -> int | None:
        code = self.stop()
        self.start()
        return code

    def token(self, user_id: str, *, role: str = "user", ttl: int = 3600) -> str:
        return issue(self.secret, user_id, role=role, ttl=ttl)

    def headers(self, user_id: str, *, role: str = "user") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user_id, role=role)}"}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=10.0)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return "(no log)"


@pytest.fixture(scope="module")
def module_schema(database_url: str) -> Iterator[str]:
    """A fresh schema for one test module's server, dropped afterwards."""
    name = f"e2e_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture(scope="module")
def server_settings(database_url: str, module_schema: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        database_url=database_url,
        database_schema=module_schema,
        data_dir=tmp_path_factory.mktemp("lineup-data"),
        host="127.0.0.1",
        port=free_port(),
        jwt_secret=JWT_SECRET,
    )


@pytest.fixture(scope="module")
def server(server_settings: Settings) -> Iterator[LineupServer]:
    """A running `lineup serve`, terminated at teardown whatever happened."""
    lineup = LineupServer(server_settings, server_settings.data_dir / "serve.log")
    try:
        lineup.start()
        yield lineup
    finally:
        lineup.stop()


@pytest.fixture
def client(server: LineupServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http
