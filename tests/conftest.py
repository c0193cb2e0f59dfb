"""Shared fixtures: a real PostgreSQL (LINEUP_TEST_DATABASE_URL, or an embedded one) and a schema per test."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from adapters.embedded import EmbeddedPostgres
from entrypoints.settings import Settings


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = os.environ.get("LINEUP_TEST_DATABASE_URL")
    if url:
        yield url
        return
    data_dir = Path(tempfile.mkdtemp(prefix="lu", dir="/tmp"))  # short: the socket lives in it
    server = EmbeddedPostgres(data_dir)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def schema(database_url: str) -> Iterator[str]:
    """A fresh schema per test, dropped afterwards: tests never see each other's rows."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def settings(database_url: str, schema: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        database_schema=schema,
        data_dir=tmp_path,
        jwt_secret="test-secret-that-is-long-enough-for-hs256",
        pool_size=4,
    )
