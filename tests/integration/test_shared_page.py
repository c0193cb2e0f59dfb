"""A projector round's shared page of the log (adapters/postgres/log.SharedPage) gives each reader
exactly what it would have read for itself, on a real PostgreSQL log of several event types."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.postgres.log import SharedPage
from domain.commands import Caller, CallNext, JoinQueue, LeaveQueue, OpenQueue
from entrypoints.bootstrap import Container

OWNER = Caller("owner")


def _log(container: Container) -> list[tuple[int, str]]:
    """A log mixing queue openings, joins, leaves and calls, one command per transaction; every
    (position, topic) of it."""
    queues = container.queues
    queues.execute([OpenQueue("a", OWNER, "A"), OpenQueue("b", OWNER, "B")], 1_000)
    for i in range(40):
        event = "ab"[i % 2]
        command = (
            JoinQueue(event, Caller(f"u{i}"), str(uuid.uuid4())),
            LeaveQueue(event, Caller(f"u{i - 4}")),
            CallNext(event, OWNER),
        )[i % 5 % 3]
        queues.execute([command], 2_000 + i)
    return [(n.id, n.topic) for n in queues.recorder.select_notifications(start=0, limit=10_000)]


def test_a_shared_page_serves_every_reader_as_its_own_read_would(container: Container) -> None:
    log = _log(container)
    head = log[-1][0]
    topics = sorted({topic for _, topic in log})
    assert len(topics) >= 3

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        after=st.integers(0, head - 1),
        limit=st.integers(1, 30),
        wanted=st.lists(st.sets(st.sampled_from(topics), min_size=1), min_size=1, max_size=3),
        stranger=st.sets(st.sampled_from(topics), min_size=1),
    )
    def check(after: int, limit: int, wanted: list[set[str]], stranger: set[str]) -> None:
        page = SharedPage.read(container.queues, after, set().union(*wanted), limit)
        assert page.head == head  # read in the same statement
        assert page.events_for(after + 1, stranger) is None  # standing elsewhere: reads for itself
        for reader_topics in wanted:
            taken = page.events_for(after, reader_topics)
            assert taken is not None
            events, last = taken
            assert after < last <= head
            # exactly its events in (after, last]: none missing, none of another topic, in order
            expected = [position for position, topic in log if after < position <= last and topic in reader_topics]
            assert [n.id for n in events] == expected

    check()
    at_head = SharedPage.read(container.queues, head, set(topics), 10)
    assert (at_head.head, at_head.last, list(at_head.notifications)) == (head, head, [])


@pytest.mark.parametrize(
    ("start", "afters"),
    [
        (25_000, (22_767, 25_000, 25_002, 32_767)),  # smallint: after + window > 32,767
        (2_147_483_000, (2_147_473_648, 2_147_483_000, 2_147_483_002)),  # integer: > 2,147,483,647
    ],
)
def test_a_page_reads_past_where_small_positions_end(container: Container, start: int, afters: tuple[int, ...]) -> None:
    """psycopg sends an int as the smallest integer type its value fits: `after + window` was
    computed in that type, and from log position 22,768 on (22,768 + 10,000 > 32,767) every round
    failed on the same page, so the projections stopped for good at a few tens of thousands of
    events (and again before position 2^31, in integer)."""
    recorder = container.queues.recorder
    table = f'"{recorder.datastore.schema}".{recorder.events_table_name}'  # type: ignore[attr-defined]
    with container.database.connect() as conn:
        conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'notification_id'), {start:d})")
    container.queues.execute([OpenQueue("far", OWNER, "Far")], 1_000)
    for i in range(3):
        container.queues.execute([JoinQueue("far", Caller(f"u{i}"), str(uuid.uuid4()))], 2_000 + i)
    log = [(n.id, n.topic) for n in container.queues.recorder.select_notifications(start=0, limit=100)]
    head = log[-1][0]
    assert [position for position, _ in log] == list(range(start + 1, head + 1))
    topics = {topic for _, topic in log}
    for after in afters:
        page = SharedPage.read(container.queues, after, topics, 10)
        assert page.head == head
        assert [n.id for n in page.notifications] == [position for position, _ in log if position > after]
