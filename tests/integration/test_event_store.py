"""The one-statement append (adapters.postgres.eventstore) keeps eventsourcing's recorder contract.

Each property is checked against eventsourcing's own PostgresProcessRecorder on the same database:
the same batches give the same stored rows in the same order, a refused tracking position or a
version collision is eventsourcing's IntegrityError and leaves nothing behind.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent, Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresProcessRecorder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from adapters.postgres.eventstore import BinaryProcessRecorder

if TYPE_CHECKING:
    from collections.abc import Iterator

Pair = tuple[PostgresProcessRecorder, BinaryProcessRecorder]


@pytest.fixture
def datastore(database_url: str, schema: str) -> Iterator[PostgresDatastore]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    params = conninfo_to_dict(database_url)
    store = PostgresDatastore(
        dbname=str(params.get("dbname") or "postgres"),
        host=str(params.get("host") or "127.0.0.1"),
        port=str(params.get("port") or "5432"),
        user=str(params.get("user") or "postgres"),
        password=str(params.get("password") or ""),
        schema=schema,
        pool_size=2,
        lock_timeout=5,
    )
    yield store
    store.close()


@pytest.fixture
def recorders(datastore: PostgresDatastore) -> Pair:
    theirs = PostgresProcessRecorder(datastore, events_table_name="theirs_events", tracking_table_name="theirs_t")
    ours = BinaryProcessRecorder(datastore, events_table_name="ours_events", tracking_table_name="ours_t")
    theirs.create_table()
    ours.create_table()
    return theirs, ours


def rows(recorder: PostgresProcessRecorder) -> list[tuple[int, uuid.UUID, int, str, bytes]]:
    return [
        (n.id, n.originator_id, n.originator_version, n.topic, n.state)
        for n in recorder.select_notifications(start=None, limit=10_000)
    ]


batch = st.lists(
    st.tuples(st.integers(0, 5), st.integers(1, 3), st.sampled_from(["a:A", "b:B.Sent"]), st.binary(max_size=600)),
    min_size=0,
    max_size=6,
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.tuples(st.integers(1, 4), batch), min_size=1, max_size=5))
def test_same_rows_ids_and_refusals_as_eventsourcing(
    datastore: PostgresDatastore, recorders: Pair, batches: list
) -> None:
    theirs, ours = recorders
    with datastore.get_connection() as conn:
        tables = ", ".join(f'"{datastore.schema}".{t}' for t in ("theirs_events", "ours_events", "theirs_t", "ours_t"))
        conn.execute(f"TRUNCATE {tables} RESTART IDENTITY")
    ids = [uuid.uuid4() for _ in range(6)]
    for position, items in batches:  # positions repeat and go back: some are refused
        events = [StoredEvent(ids[i], version, topic, state) for i, version, topic, state in items]
        outcomes = []
        for recorder in (theirs, ours):
            try:
                outcomes.append(recorder.insert_events(events, tracking=Tracking("p", position)))
            except IntegrityError:
                outcomes.append("refused")
        assert outcomes[0] == outcomes[1]
        assert theirs.max_tracking_id("p") == ours.max_tracking_id("p")
    assert rows(theirs) == rows(ours)


def test_a_refused_tracking_position_appends_nothing(recorders: Pair) -> None:
    _, ours = recorders
    first = ours.insert_events([StoredEvent(uuid.uuid4(), 1, "a:A", b"{}")], tracking=Tracking("p", 5))
    assert first is not None
    assert len(first) == 1
    for position in (5, 4):
        with pytest.raises(IntegrityError, match="tracking"):
            ours.insert_events([StoredEvent(uuid.uuid4(), 1, "a:A", b"{}")], tracking=Tracking("p", position))
    assert [n.id for n in ours.select_notifications(start=None, limit=10)] == first
    assert ours.max_tracking_id("p") == 5


def test_a_version_collision_keeps_the_tracking_position(recorders: Pair) -> None:
    _, ours = recorders
    taken = uuid.uuid4()
    ours.insert_events([StoredEvent(taken, 1, "a:A", b"{}")], tracking=Tracking("p", 1))
    with pytest.raises(IntegrityError):
        ours.insert_events(
            [StoredEvent(uuid.uuid4(), 1, "a:A", b"{}"), StoredEvent(taken, 1, "a:A", b"{}")],
            tracking=Tracking("p", 2),
        )
    assert ours.max_tracking_id("p") == 1
    assert len(ours.select_notifications(start=None, limit=10)) == 1


def test_ids_are_returned_in_the_order_of_the_batch(recorders: Pair) -> None:
    _, ours = recorders
    events = [StoredEvent(uuid.uuid4(), 1, "a:A", str(i).encode()) for i in range(50)]
    ids = ours.insert_events(events)
    stored = ours.select_notifications(start=None, limit=100)
    assert ids == [n.id for n in stored]
    assert [n.state for n in stored] == [e.state for e in events]


def test_event_states_are_compressed_with_lz4_where_the_server_has_it(
    datastore: PostgresDatastore, recorders: Pair
) -> None:
    _, ours = recorders
    ours.create_table()  # created again (every start does): the check runs, the ALTER does not repeat
    with datastore.get_connection() as conn:
        has_lz4 = conn.execute(
            "SELECT 'lz4' = ANY(enumvals) AS lz4 FROM pg_settings WHERE name = 'default_toast_compression'"
        ).fetchone()["lz4"]
        compression = {
            row["relname"]: row["attcompression"]
            for row in conn.execute(
                "SELECT c.relname, a.attcompression FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
                " WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'r' AND a.attname = 'state'",
                (f'"{datastore.schema}"',),
            ).fetchall()
        }
    assert compression == {"theirs_events": "", "ours_events": "l" if has_lz4 else ""}
