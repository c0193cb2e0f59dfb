"""The operator commands against a real database: cleanup, status, events, replay, verify, rebuild."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

LINEUP = Path(sys.executable).parent / "lineup"


def run(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LINEUP_", "STRIPE_"))}
    return subprocess.run(
        [str(LINEUP), *args], env={**clean, **env}, capture_output=True, text=True, timeout=timeout, check=False
    )


def database_env(database_url: str, schema: str) -> dict[str, str]:
    return {"LINEUP_DATABASE_URL": database_url, "LINEUP_DATABASE_SCHEMA": schema}


def migrated(database_url: str, schema: str) -> dict[str, str]:
    env = database_env(database_url, schema)
    done = run("migrate", env=env)
    assert done.returncode == 0, done.stderr
    return env


def test_cleanup_removes_expired_notifications_and_old_changes(database_url: str, schema: str) -> None:
    env = migrated(database_url, schema)
    with psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema}") as conn:
        conn.execute(
            "INSERT INTO notifications (notification_id, user_id, type, data, created_at, expires_at) VALUES"
            " ('n1', 'u', 't', '{}', 1, 2), ('n2', 'u', 't', '{}', 1, 3), ('n3', 'u', 't', '{}', 1, 9e15)"
        )
        conn.execute(
            "INSERT INTO change_feed (cursor, query, args, key, op, row, recorded_at) VALUES"
            " (-2, 'q', 'a', 'k', 'remove', NULL, now() - interval '25 hours'),"
            " (-1, 'q', 'a', 'k', 'remove', NULL, now() - interval '1 hour')"
        )
    done = run("cleanup", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "removed 2 expired notifications, 1 changes older than 24 h"
    with psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema}") as conn:
        left = conn.execute("SELECT notification_id FROM notifications").fetchall()
        assert left == [("n3",)]
    again = run("cleanup", env=env)
    assert again.stdout.strip() == "removed 0 expired notifications, 0 changes older than 24 h"


def test_cleanup_on_an_unmigrated_schema_exits_2_with_one_line(database_url: str, schema: str) -> None:
    done = run("cleanup", env=database_env(database_url, schema))
    assert done.returncode == 2
    assert "lineup migrate" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
