"""Lineup's domain: aggregates, their events and rules, and the use cases (no I/O, no clocks)."""
