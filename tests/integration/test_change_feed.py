"""The change feed's cursor is commit-ordered: a reader paging `cursor > last` never skips a change."""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from adapters.postgres import changes
from adapters.postgres.cleanup import Cleanup
from adapters.postgres.database import Database
from entrypoints.bootstrap import Container, build
from entrypoints.settings import Settings


def connect(container: Container) -> psycopg.Connection[Any]:
    return psycopg.connect(**container.database.params(), row_factory=dict_row)


def change(n: int) -> tuple[str, str, str, str, str | None]:
    return ("test.query", "args", f"key-{n}", "upsert", json.dumps({"n": n}))


def test_a_naive_bigserial_skips_a_change_that_commits_late(container: Container) -> None:
    """The failure this design exists to prevent, shown deterministically with two transactions."""
    database: Database = container.database
    with database.connect() as admin:
        admin.execute("CREATE TABLE naive_feed (cursor bigserial PRIMARY KEY, key text)")
    with connect(container) as slow, connect(container) as fast, database.connect() as reader:
        slow.execute("INSERT INTO naive_feed (key) VALUES ('slow')")  # takes cursor 1, commits later
        fast.execute("INSERT INTO naive_feed (key) VALUES ('fast')")  # takes cursor 2
        fast.commit()
        seen = [row["cursor"] for row in reader.execute("SELECT cursor FROM naive_feed WHERE cursor > 0")]
        last = max(seen)
        slow.commit()
        seen += [row["cursor"] for row in reader.execute("SELECT cursor FROM naive_feed WHERE cursor > %s", (last,))]
        assert seen == [2], "the reader moved past 1 before it committed, and never saw it"


def test_the_change_feed_makes_a_late_committer_hold_back_the_next(container: Container) -> None:
    feed = changes.ChangeFeed(container.pool)
    with connect(container) as slow, connect(container) as fast:
        changes.append(slow.cursor(), [change(1)])  # holds the head row until it commits
        done = threading.Event()

        def write_fast() -> None:
            changes.append(fast.cursor(), [change(2)])  # waits for the head row
            fast.commit()
            done.set()

        thread = threading.Thread(target=write_fast)
        thread.start()
        time.sleep(0.2)
        assert not done.is_set(), "the second writer got a cursor before the first committed"
        assert feed.after(0) == []  # nothing is visible, so a reader cannot move past anything
        slow.commit()
        thread.join(5)
    assert [(row["cursor"], row["key"]) for row in feed.after(0)] == [(1, "key-1"), (2, "key-2")]


def test_concurrent_writers_and_a_paging_reader_never_skip(container: Container) -> None:
    feed = changes.ChangeFeed(container.pool)
    writers, transactions = 8, 25
    finished = threading.Event()
    seen: list[int] = []

    def write(seed: int) -> None:
        rng = random.Random(seed)
        with connect(container) as conn:
            for n in range(transactions):
                changes.append(conn.cursor(), [change(seed * 1000 + n * 10 + i) for i in range(rng.randint(1, 3))])
                time.sleep(rng.random() / 500)  # commit late, sometimes
                conn.commit()

    def read() -> None:
        last = 0
        while True:
            done = finished.is_set()
            page = feed.after(last)
            for row in page:
                seen.append(row["cursor"])
                last = row["cursor"]
            if done and not page:
                return

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=write, args=(seed,)) for seed in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    finished.set()
    reader.join(30)
    head = feed.head()
    assert head >= writers * transactions
    assert seen == list(range(1, head + 1))  # every cursor, once, in order


def test_the_queues_projection_puts_each_touched_summary_on_the_feed(container: Container) -> None:
    from domain.commands import Caller, JoinQueue, OpenQueue, PauseQueue

    owner = Caller("owner")
    container.queues.execute([OpenQueue("a", owner, "A", capacity=5), OpenQueue("b", owner, "B")], 1_000)
    container.runners[0].catch_up()
    container.queues.execute([JoinQueue("a", Caller("u1"), "x1"), JoinQueue("a", Caller("u2"), "x2")], 2_000)
    container.queues.execute([PauseQueue("a", owner)], 3_000)
    container.runners[0].catch_up()
    rows = changes.ChangeFeed(container.pool).after(0)
    assert {row["query"] for row in rows} == {"queue.summary"}
    # one change per touched queue per projection batch: the open batch, then one for a's two batches
    assert sorted(row["key"] for row in rows[:2]) == ["a", "b"]
    assert [row["key"] for row in rows[2:]] == ["a"]
    summary = container.reader.summary("a")
    assert summary is not None
    assert rows[-1]["row"] == {
        "event_id": "a",
        "name": "A",
        "status": "paused",
        "waiting": 2,
        "avg_service_seconds": 300,
        "owner_id": "owner",
        "capacity": 5,
        "requires_payment": False,
    }


def test_entry_rows_are_published_as_diffs_and_long_queues_are_throttled(
    container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapters.postgres import live_rows
    from domain.commands import Caller, CallNext, JoinQueue, OpenQueue

    owner = Caller("owner")
    publisher = live_rows.LiveRowsPublisher(container.pool, container.database)
    feed = changes.ChangeFeed(container.pool)
    container.queues.execute([OpenQueue("q", owner, "Q")], 1_000)
    container.queues.execute([JoinQueue("q", Caller(u), f"entry-{u}") for u in "abc"], 2_000)
    container.runners[0].catch_up()
    start = feed.head()
    assert publisher() == 6  # three rows, each for queue.event and queue.user
    assert publisher.cost != live_rows.FIRST_COST  # timed: the spacing follows what publishing costs here
    published = feed.after(start)
    assert {(row["query"], row["args"]) for row in published} == {
        ("queue.event", "q"),
        ("queue.user", "a"),
        ("queue.user", "b"),
        ("queue.user", "c"),
    }
    assert publisher() == 0  # nothing dirty, nothing written

    container.queues.execute([CallNext("q", owner)], 3_000)
    container.runners[0].catch_up()
    start = feed.head()
    time.sleep(live_rows.MIN_SPACING)  # a queue is published at most this often
    publisher()
    moved = {(row["query"], row["key"]): row["row"] for row in feed.after(start)}
    assert moved["queue.event", "entry-a"]["status"] == "called"
    assert moved["queue.user", "entry-b"]["position"] == 1
    listed = container.reader.event_entries(container.reader.summary("q") or {})
    assert [moved["queue.event", e.entry_id]["estimated_time"] for e in listed if e.status == "waiting"] == [
        e.estimated_time for e in listed if e.status == "waiting"
    ]

    monkeypatch.setattr(live_rows, "DUTY", publisher.cost / 3)  # 3 waiting: at most every 9 s
    container.queues.execute([JoinQueue("q", Caller("d"), "entry-d")], 4_000)
    container.runners[0].catch_up()
    assert publisher() == 0  # published less than 9 s ago: wait
    assert publisher.held_back() == container.queues.recorder.max_notification_id()  # the join's position
    monkeypatch.setattr(live_rows, "DUTY", 1_000_000.0)  # spacing: MIN_SPACING
    time.sleep(live_rows.MIN_SPACING)
    assert publisher() > 0  # due now: the waiting mark was kept
    assert publisher.held_back() is None


def test_marking_a_queue_never_waits_for_its_publication_and_a_later_mark_survives_it(
    container: Container,
) -> None:
    """The projector's batch marks a queue while the publisher is publishing it: the mark goes in at
    once (with one row per queue it waited for the whole publication), and since the publication's
    snapshot did not see it, it stays for the next pass."""
    from adapters.postgres import live_rows
    from domain.commands import Caller, JoinQueue, OpenQueue

    container.queues.execute([OpenQueue("q", Caller("owner"), "Q")], 1_000)
    container.queues.execute([JoinQueue("q", Caller("a"), "entry-a")], 2_000)
    container.runners[0].catch_up()
    summary = container.reader.summary("q")
    assert summary is not None
    queue_id = summary["queue_id"]
    with connect(container) as publishing, connect(container) as projecting:
        assert live_rows.publish(publishing.cursor(), queue_id) == 2
        projecting.execute("SET lock_timeout = '2s'")
        projecting.execute(live_rows.MARK_DIRTY, ([queue_id], [99]))  # would time out if it had to wait
        projecting.commit()
        publishing.commit()
    with connect(container) as conn:
        marks = conn.execute("SELECT count(*) AS n FROM live_dirty WHERE queue_id = %s", (queue_id,)).fetchone()
    assert marks == {"n": 1}
    assert live_rows.LiveRowsPublisher(container.pool, container.database)() == 0  # nothing moved: an empty diff
    with connect(container) as conn:
        assert conn.execute("SELECT count(*) AS n FROM live_dirty").fetchone() == {"n": 0}


def test_a_live_dirty_table_with_one_row_per_queue_loses_its_key_at_start(settings: Settings, schema: str) -> None:
    database = Database(str(settings.database_url), schema)
    database.create_schema()
    with database.connect() as conn:
        conn.execute("CREATE TABLE live_dirty (queue_id uuid PRIMARY KEY)")
        conn.execute("INSERT INTO live_dirty VALUES ('00000000-0000-0000-0000-000000000001')")
    build(settings, projectors=False).close()  # the DDL runs at every start
    with database.connect() as conn:
        conn.execute("INSERT INTO live_dirty VALUES ('00000000-0000-0000-0000-000000000001', 7)")  # a second mark
        keys = conn.execute(  # primary and unique keys (PostgreSQL 18 lists NOT NULL here too)
            "SELECT count(*) AS n FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype IN ('p', 'u')",
            (f'"{schema}".live_dirty',),
        ).fetchone()
        marks = conn.execute("SELECT count(*) AS n FROM live_dirty").fetchone()
        positions = conn.execute("SELECT position FROM live_dirty ORDER BY position").fetchall()
    assert (keys, marks) == ({"n": 0}, {"n": 2})
    assert positions == [{"position": 0}, {"position": 7}]


def test_the_clean_up_trims_changes_older_than_what_is_kept(container: Container) -> None:
    with connect(container) as conn:
        changes.append(conn.cursor(), [change(1), change(2), change(3)])
        conn.execute("UPDATE change_feed SET recorded_at = now() - interval '25 hours' WHERE cursor <= 2")
        conn.commit()
    assert Cleanup(container.pool, keep_hours=24).run().changes == 2
    feed = changes.ChangeFeed(container.pool)
    assert (feed.oldest(), feed.head()) == (3, 3)


def test_lineup_connections_never_jit_compile(container: Container) -> None:
    """live_rows.STAGE's estimates cross jit_above_cost; compiling it cost 1.77 s per publication."""
    with container.pool.connection() as conn:
        assert conn.execute("SHOW jit").fetchone() == {"jit": "off"}
    with container.database.connect() as conn:
        assert conn.execute("SHOW jit").fetchone() == {"jit": "off"}
