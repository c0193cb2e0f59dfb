"""Settings: the only place that reads the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class SettingsError(ValueError):
    """A setting has a value Lineup cannot use; the message names it."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        msg = f"{name} must be an integer, got {raw!r}"
        raise SettingsError(msg) from None
    if value < minimum:
        msg = f"{name} must be at least {minimum}, got {value}"
        raise SettingsError(msg)
    return value


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with the contract's defaults (see README, "Settings")."""

    database_url: str | None = None
    data_dir: Path = Path(".lineup")
    host: str = "127.0.0.1"
    port: int = 8000
    jwt_secret: str | None = None
    stripe_webhook_secrets: tuple[str, ...] = ()
    notification_ttl: int = 86_400
    database_schema: str = "public"
    pool_size: int = 8
    lock_timeout: int = 5
    log_level: str = "info"
    workers: int = 1
    ws_ping_timeout: int = 60

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        secrets = tuple(s.strip() for s in env.get("STRIPE_WEBHOOK_SECRET", "").split(",") if s.strip())
        return cls(
            database_url=env.get("LINEUP_DATABASE_URL", "").strip() or None,
            data_dir=Path(env.get("LINEUP_DATA_DIR", "").strip() or ".lineup"),
            host=env.get("LINEUP_HOST", "").strip() or "127.0.0.1",
            port=_int(env, "LINEUP_PORT", 8000),
            jwt_secret=env.get("LINEUP_JWT_SECRET") or None,
            stripe_webhook_secrets=secrets,
            notification_ttl=_int(env, "LINEUP_NOTIFICATION_TTL", 86_400, minimum=1),
            database_schema=env.get("LINEUP_DATABASE_SCHEMA", "").strip() or "public",
            pool_size=_int(env, "LINEUP_DB_POOL_SIZE", 8, minimum=2),
            lock_timeout=_int(env, "LINEUP_DB_LOCK_TIMEOUT", 5, minimum=1),
            log_level=(env.get("LINEUP_LOG_LEVEL", "").strip() or "info").lower(),
            workers=_int(env, "LINEUP_WORKERS", 1, minimum=1),
            ws_ping_timeout=_int(env, "LINEUP_WS_PING_TIMEOUT", 60, minimum=1),
        )

    def for_workers(self, database_url: str, jwt_secret: str) -> dict[str, str]:
        """Environment for `lineup serve`'s worker processes: the resolved database and secret."""
        return {"LINEUP_DATABASE_URL": database_url, "LINEUP_JWT_SECRET": jwt_secret, "LINEUP_WORKERS": "1"}
