"""The periodic clean-up: expired notifications go (subscribers get `remove`), old changes are trimmed."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapters.postgres import changes, notifications

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)
EVERY = 60.0  # seconds between runs inside `lineup serve` (in the projecting process)


@dataclass(frozen=True)
class Removed:
    notifications: int
    changes: int


class Cleanup:
    def __init__(
        self,
        pool: ConnectionPool[psycopg.Connection[Any]],
        *,
        keep_hours: float = changes.KEEP_HOURS,
        every: float = EVERY,
    ) -> None:
        self.pool, self.keep_hours, self.every = pool, keep_hours, every
        self._next = 0.0

    def run(self, now_ms: int | None = None) -> Removed:
        """Once, now."""
        removed = Removed(notifications.delete_expired(self.pool, now_ms), changes.trim(self.pool, self.keep_hours))
        if removed.notifications or removed.changes:
            log.info("clean-up removed %d expired notifications, %d old changes", *vars(removed).values())
        return removed

    def __call__(self) -> int:
        """Run when due (a periodic task of the projector thread); returns 0: never counts as work."""
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every
            self.run()
        return 0

    def held_back(self) -> None:
        """Nothing: what it removes is removed in full (see `adapters.postgres.projector.Publisher`)."""
        return
