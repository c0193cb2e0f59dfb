"""The garbage collector in a serving process."""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Once a serving process has started: what it built (modules, the app, the container) moves
    to the collector's permanent generation, so full collections under load no longer traverse it.
    Measured in the HTTP process under webhook load: ~90,000 tracked objects at start, and a full
    collection over them and the first cached records paused it for ~95 ms (docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
