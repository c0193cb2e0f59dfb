"""How far the projections of this process have got, and futures that resolve when they get there."""

from __future__ import annotations

import heapq
import itertools
import threading
from concurrent.futures import Future


class Progress:
    """The lowest tracked position over the registered projections, shared between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._positions: dict[str, int] = {}
        self._waiters: list[tuple[int, int, Future[None]]] = []
        self._tie = itertools.count()

    def register(self, name: str, position: int) -> None:
        with self._lock:
            self._positions[name] = position
        self._release()

    def advance(self, name: str, position: int) -> None:
        with self._lock:
            self._positions[name] = max(position, self._positions.get(name, 0))
        self._release()

    def position(self) -> int | None:
        with self._lock:
            return min(self._positions.values()) if self._positions else None

    def reached(self, position: int) -> Future[None]:
        """A future that resolves once every projection has processed `position`."""
        future: Future[None] = Future()
        with self._lock:
            heapq.heappush(self._waiters, (position, next(self._tie), future))
        self._release()
        return future

    def _release(self) -> None:
        ready: list[Future[None]] = []
        with self._lock:
            if not self._positions:
                return
            low = min(self._positions.values())
            while self._waiters and self._waiters[0][0] <= low:
                ready.append(heapq.heappop(self._waiters)[2])
        for future in ready:
            if not future.done():
                future.set_result(None)
