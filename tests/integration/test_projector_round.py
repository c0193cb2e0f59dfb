"""A projector round: every projection's batch and tracking position in one transaction, or none."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapters.postgres.projector import ProjectionRunner, run_together
from adapters.progress import Progress
from domain.commands import Caller, CallNext, JoinQueue, OpenQueue
from entrypoints.bootstrap import TRACKING_TABLE, tracking_recorder
from tests.integration.test_change_feed import connect

if TYPE_CHECKING:
    from entrypoints.bootstrap import Container

OWNER = Caller("owner")


def history(container: Container) -> None:
    """Events both the queues and the notifications projection write rows for (a call, a next in line)."""
    container.queues.execute([OpenQueue("e1", OWNER, "Show")], 1_000)
    container.queues.execute([JoinQueue("e1", Caller(u), f"entry-{u}") for u in "abc"], 2_000)
    container.queues.execute([CallNext("e1", OWNER)], 3_000)


def by_name(container: Container) -> dict[str, ProjectionRunner[Any]]:
    return {runner.name: runner for runner in container.runners}


def written_by(container: Container) -> dict[str, set[int]]:
    """The transactions (xmin) that wrote each table's rows and each projection's tracking row."""
    with connect(container) as conn:
        found = {
            table: {row["tx"] for row in conn.execute(f"SELECT xmin::text::bigint AS tx FROM {table}").fetchall()}
            for table in ("queue_summary", "queue_entries", "notifications")
        }
        tracked = (
            f"SELECT application_name, xmin::text::bigint AS tx FROM {TRACKING_TABLE} WHERE application_name = ANY(%s)"
        )
        for row in conn.execute(tracked, (["queues", "notifications"],)):
            found[f"tracking {row['application_name']}"] = {row["tx"]}
    return found


def test_a_round_commits_every_projections_batch_and_position_in_one_transaction(container: Container) -> None:
    history(container)
    runners = by_name(container)
    head = container.queues.recorder.max_notification_id()
    assert run_together([runners["queues"], runners["notifications"]]) > 0
    found = written_by(container)
    assert found["notifications"]  # the call and the next in line notified their users
    assert len(set().union(*found.values())) == 1, found
    assert runners["queues"].position == runners["notifications"].position == head
    assert not runners["queues"].dirty
    assert not runners["notifications"].dirty


def test_a_position_refused_to_one_projection_writes_nothing_for_any(container: Container) -> None:
    """Another process recorded the queues' position first: the round rolls back whole, and each runner
    goes on from what is recorded."""
    history(container)
    runners = by_name(container)
    runners["queues"].catch_up()
    stale = ProjectionRunner(
        container.queues,
        container.pool,
        runners["queues"].projection,
        runners["queues"].writer,
        tracking_recorder(container.queues),
        Progress(),
    )
    stale.position = 0  # a restarted or second process that believes it starts from scratch
    before = written_by(container)
    assert run_together([stale, runners["notifications"]]) == 0
    assert written_by(container) == before  # no notification rows, no tracking row for them
    assert stale.position == runners["queues"].position
    assert runners["notifications"].position == 0  # reloaded: nothing was recorded for it
    assert run_together([stale, runners["notifications"]]) > 0  # and the next round projects it
    assert written_by(container)["notifications"]
