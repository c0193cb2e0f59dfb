"""ASGI factory for `lineup serve` worker processes (uvicorn imports it by name)."""

from __future__ import annotations

from entrypoints.bootstrap import build
from entrypoints.http import create_app
from entrypoints.settings import Settings
from entrypoints.webhook_path import StripeWebhookPath


def worker_app() -> StripeWebhookPath:
    """One worker: its own container (committer, pools, listener); the app closes it on shutdown.
    The projections run in `lineup serve`'s projector process, not here."""
    container = build(Settings.from_env(), elect=False)
    container.start()
    return StripeWebhookPath(create_app(container, freeze_heap=True), container)
