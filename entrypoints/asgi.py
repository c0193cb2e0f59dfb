"""ASGI factory for `lineup serve` worker processes (uvicorn imports it by name)."""

from __future__ import annotations

from litestar import Litestar

from entrypoints.bootstrap import build
from entrypoints.http import create_app
from entrypoints.settings import Settings


def worker_app() -> Litestar:
    """One worker: its own container (committer, pools, listener); the app closes it on shutdown."""
    container = build(Settings.from_env())
    container.start()
    return create_app(container)
