"""How often a long queue's entry rows are republished: publishing takes about DUTY of the time."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from adapters.postgres import live_rows
from adapters.postgres.live_rows import publication_spacing

waiting = st.integers(0, 1_000_000)
cost = st.floats(1e-7, 1e-2)


@given(waiting, cost)
def test_publishing_every_dirty_queue_once_per_spacing_takes_at_most_the_duty_unless_capped(w: int, c: float) -> None:
    spacing = publication_spacing(w, c)
    assert live_rows.MIN_SPACING <= spacing <= live_rows.MAX_SPACING
    if spacing < live_rows.MAX_SPACING:
        assert w * c <= live_rows.DUTY * spacing * (1 + 1e-9)
    if live_rows.MIN_SPACING < spacing < live_rows.MAX_SPACING:  # no slack: the budget is used
        assert abs(w * c - live_rows.DUTY * spacing) <= 1e-9 * max(1.0, w * c)


@given(waiting, waiting, cost, cost)
def test_longer_queues_and_slower_publications_are_republished_less_often(
    w1: int, w2: int, c1: float, c2: float
) -> None:
    (w1, w2), (c1, c2) = sorted((w1, w2)), sorted((c1, c2))
    assert publication_spacing(w1, c1) <= publication_spacing(w2, c1) <= publication_spacing(w2, c2)


@given(cost, st.floats(0.0, 10.0), st.integers(0, 1_000_000))
def test_a_small_publication_moves_the_estimate_no_further_than_a_floor_sized_one(
    c: float, seconds: float, w: int
) -> None:
    """Its time is mostly fixed cost: divided by its few entries it would say each entry costs it all."""
    after = live_rows.next_cost(c, seconds, w)
    per_entry = seconds / max(live_rows.COST_FLOOR, w)
    assert min(c, per_entry) - 1e-12 <= after <= max(c, per_entry) + 1e-12  # between the old and the new
    if w < live_rows.COST_FLOOR:
        assert after <= max(c, seconds / live_rows.COST_FLOOR) + 1e-12
