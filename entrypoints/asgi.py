"""ASGI factory for `lineup serve` worker processes (uvicorn imports it by name)."""

from __future__ import annotations

from entrypoints.bootstrap import build
from entrypoints.fast_paths import FastPaths
from entrypoints.http import create_app
from entrypoints.settings import Settings


def worker_app() -> FastPaths:
    """One worker: its own container (committer, pools, listener); the app closes it on shutdown.
    The projections run in `lineup serve`'s projector process, not here."""
    container = build(Settings.from_env(), elect=False)
    container.start()
    return FastPaths(create_app(container, freeze_heap=True), container)
