"""The `lineup` command: migrate, token, configuration errors, and serve on the embedded default."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from tests.e2e.conftest import free_port

LINEUP = Path(sys.executable).parent / "lineup"


def run(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LINEUP_", "STRIPE_"))}
    return subprocess.run(
        [str(LINEUP), *args], env={**clean, **env}, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """The embedded server's socket lives in the data dir, so keep its path short."""
    path = Path(tempfile.mkdtemp(prefix="lu", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_migrate_is_idempotent(database_url: str, schema: str) -> None:
    env = {"LINEUP_DATABASE_URL": database_url, "LINEUP_DATABASE_SCHEMA": schema}
    for _ in range(2):
        done = run("migrate", env=env)
        assert done.returncode == 0, done.stderr
        assert "up to date" in done.stdout


def test_token_is_signed_with_the_configured_secret(tmp_path: Path) -> None:
    done = run("token", "--user", "alice", "--role", "service", "--ttl", "60", env={"LINEUP_JWT_SECRET": "s" * 32})
    assert done.returncode == 0, done.stderr
    claims = jwt.decode(done.stdout.strip(), "s" * 32, algorithms=["HS256"])
    assert (claims["sub"], claims["role"]) == ("alice", "service")
    assert 0 < claims["exp"] - time.time() <= 60


def test_without_a_secret_one_is_created_once_in_the_data_dir(tmp_path: Path) -> None:
    first = run("token", "--user", "bob", env={"LINEUP_DATA_DIR": str(tmp_path)})
    second = run("token", "--user", "bob", env={"LINEUP_DATA_DIR": str(tmp_path)})
    secret = (tmp_path / "jwt_secret").read_text().strip()
    assert "LINEUP_JWT_SECRET is not set" in first.stderr
    for done in (first, second):
        assert jwt.decode(done.stdout.strip(), secret, algorithms=["HS256"])["sub"] == "bob"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LINEUP_PORT": "eighty"}, "LINEUP_PORT must be an integer"),
        ({"LINEUP_WORKERS": "0"}, "LINEUP_WORKERS must be at least 1"),
        ({"LINEUP_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}, "cannot reach the database"),
    ],
)
def test_bad_configuration_exits_2_with_one_line(env: dict[str, str], message: str, tmp_path: Path) -> None:
    done = run("serve", env={"LINEUP_DATA_DIR": str(tmp_path), "LINEUP_JWT_SECRET": "x" * 32, **env})
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_serve_on_the_embedded_default_keeps_state_and_stops_its_server(short_dir: Path) -> None:
    port = free_port()
    env = {"LINEUP_DATA_DIR": str(short_dir), "LINEUP_PORT": str(port), "LINEUP_JWT_SECRET": "e" * 32}
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LINEUP_", "STRIPE_"))}
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {run('token', '--user', 'alice', env=env).stdout.strip()}"}

    def serve() -> subprocess.Popen[bytes]:
        process = subprocess.Popen([str(LINEUP), "serve"], env={**clean, **env}, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    return process
            except httpx.TransportError:
                time.sleep(0.1)
        process.kill()
        pytest.fail("lineup serve on the embedded default did not start")

    process = serve()
    assert httpx.post(f"{base}/events/emb/queue", json={"name": "Embedded"}, headers=headers).status_code == 201
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    assert not (short_dir / "pg" / "postmaster.pid").exists(), "the embedded PostgreSQL outlived lineup serve"

    process = serve()  # same data dir: the queue is still there
    try:
        summary = httpx.get(f"{base}/events/emb/queue/summary", headers=headers)
        assert summary.status_code == 200
        assert summary.json()["name"] == "Embedded"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def test_serve_on_a_taken_port_exits_2_with_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            env = {"LINEUP_DATA_DIR": str(tmp_path), "LINEUP_PORT": str(port), "LINEUP_WORKERS": workers}
            done = run("serve", env={**env, "LINEUP_JWT_SECRET": "x" * 32})
            assert done.returncode == 2
            assert done.stderr.strip().splitlines()[-1].startswith(f"lineup: cannot listen on 127.0.0.1:{port}")
