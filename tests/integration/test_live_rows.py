"""Publishing queue entry rows: in chunks that each hold the feed head briefly, paced by the duty."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.postgres import changes, live_rows
from domain.commands import Caller, JoinQueue, OpenQueue
from tests.integration.test_change_feed import connect

if TYPE_CHECKING:
    from uuid import UUID

    import pytest

    from entrypoints.bootstrap import Container


def open_with(container: Container, event_id: str, users: str, at: int) -> UUID:
    """A queue `event_id` with one waiting entry per character of `users`, projected; its id."""
    container.queues.execute([OpenQueue(event_id, Caller("owner"), event_id.upper())], at)
    container.queues.execute([JoinQueue(event_id, Caller(u), f"{event_id}-{u}") for u in users], at + 1)
    container.runners[0].catch_up()
    summary = container.reader.summary(event_id)
    assert summary is not None
    return summary["queue_id"]  # type: ignore[no-any-return]


def opened(container: Container, event_id: str) -> UUID:
    """The id of queue `event_id`, opened now if it is not open yet."""
    summary = container.reader.summary(event_id)
    return summary["queue_id"] if summary else open_with(container, event_id, "", 1_000)  # type: ignore[no-any-return]


def published(container: Container, start: int) -> list[dict[str, Any]]:
    """The feed's changes after `start`, with the transaction that wrote each (xmin)."""
    with connect(container) as conn:
        return conn.execute(
            "SELECT cursor, query, key, xmin::text::bigint AS tx FROM change_feed WHERE cursor > %s ORDER BY cursor",
            (start,),
        ).fetchall()


def live(container: Container, queue_id: UUID) -> dict[tuple[str, str], Any]:
    with connect(container) as conn:
        rows = conn.execute("SELECT query, key, row FROM live_rows WHERE queue_id = %s", (queue_id,)).fetchall()
    return {(row["query"], row["key"]): row["row"] for row in rows}


def test_a_long_publication_goes_on_the_feed_in_chunks_of_its_own_transactions(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_rows, "CHUNK", 4)
    queue_id = open_with(container, "q", "abcde", 1_000)  # 5 entries: 10 changes
    start = changes.ChangeFeed(container.pool).head()
    publisher = live_rows.LiveRowsPublisher(container.pool, container.database)
    assert publisher() == 10
    rows = published(container, start)
    assert [row["cursor"] for row in rows] == list(range(start + 1, start + 11))  # no gap, nothing twice
    by_tx: dict[int, int] = {}
    for row in rows:
        by_tx[row["tx"]] = by_tx.get(row["tx"], 0) + 1
    assert sorted(by_tx.values()) == [2, 4, 4]  # each chunk committed on its own: the head was let go between
    assert set(live(container, queue_id)) == {(row["query"], row["key"]) for row in rows}
    with connect(container) as conn:
        assert conn.execute("SELECT count(*) AS n FROM live_dirty").fetchone() == {"n": 0}
        assert conn.execute("SELECT count(*) AS n FROM live_publication").fetchone() == {"n": 0}


def test_a_mark_made_while_a_publication_is_under_way_stays_for_the_next(container: Container) -> None:
    """The steps of a publication as `LiveRowsPublisher` takes them, with the projector marking the queue
    between the staging and the last chunk: that mark is left for the next publication."""
    queue_id = open_with(container, "q", "ab", 1_000)
    with connect(container) as publishing, connect(container) as projecting:
        with publishing.transaction():
            publishing.execute(live_rows.CLEAR_LEFTOVERS)
            staged = publishing.execute(live_rows.STAGE, {"q": queue_id}).fetchone()
        assert staged is not None
        assert staged["n"] == 4
        projecting.execute(live_rows.MARK_DIRTY, ([queue_id], [staged["marked"] + 1]))
        projecting.commit()
        with publishing.transaction():
            publishing.execute(live_rows.APPEND, {"q": queue_id, "size": 4})
            publishing.execute(live_rows.CLEAR, {"q": queue_id, "marked": staged["marked"]})
        marks = publishing.execute("SELECT position FROM live_dirty WHERE queue_id = %s", (queue_id,)).fetchall()
    assert marks == [{"position": staged["marked"] + 1}]
    assert len(live(container, queue_id)) == 4


def test_publications_rest_so_that_publishing_takes_at_most_the_duty_over_any_stretch(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two queues due at once: the second waits for the rest the first one's publication earned."""
    open_with(container, "p", "ab", 1_000)
    open_with(container, "q", "cd", 2_000)
    publisher = live_rows.LiveRowsPublisher(container.pool, container.database)
    monkeypatch.setattr(live_rows, "DUTY", 1e-6)  # a rest of a million times the publication's time
    first = publisher()
    assert first == 4  # one queue, two rows for each of its two entries
    assert publisher.held_back() is not None  # the other queue's mark: still dirty
    assert publisher() == 0  # resting
    monkeypatch.setattr(live_rows, "DUTY", 1.0)  # no rest
    assert publisher() == 4
    assert publisher.held_back() is None


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**12)), max_size=40))
def test_the_dirty_queues_are_each_queue_with_its_oldest_mark(
    container: Container, marks: list[tuple[int, int]]
) -> None:
    """`DIRTY` skips from one queue to the next along the index; it must find what grouping all marks finds."""
    queue_ids = [opened(container, f"d{i}") for i in range(4)]
    with connect(container) as conn:
        conn.execute("DELETE FROM live_dirty")
        if marks:
            conn.execute(live_rows.MARK_DIRTY, ([queue_ids[q] for q, _ in marks], [p for _, p in marks]))
        found = {row["queue_id"]: row["position"] for row in conn.execute(live_rows.DIRTY)}
        grouped = conn.execute(
            "SELECT queue_id, min(position) AS position FROM live_dirty GROUP BY queue_id"
        ).fetchall()
        assert found == {row["queue_id"]: row["position"] for row in grouped}
    assert found == {queue_ids[q]: min(p for r, p in marks if r == q) for q, _ in marks}


def test_live_rows_leaves_room_on_its_pages_for_updates_in_place(container: Container) -> None:
    """Every publication rewrites a queue's rows: half-full pages let PostgreSQL update them in place."""
    with connect(container) as conn:
        options = conn.execute("SELECT reloptions FROM pg_class WHERE oid = 'live_rows'::regclass").fetchone()
    assert options == {"reloptions": ["fillfactor=50"]}
