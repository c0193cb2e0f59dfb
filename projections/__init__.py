"""Read models: turn domain events into read-model changes (no SQL here)."""
