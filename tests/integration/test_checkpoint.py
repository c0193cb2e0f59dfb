"""The projector's checkpoint commits without waiting for the WAL flush; nothing else does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg.sql import Identifier

from adapters.postgres.projector import checkpoint, record_positions
from entrypoints.bootstrap import tracking_recorder

if TYPE_CHECKING:
    from entrypoints.bootstrap import Container


def test_a_checkpoint_relaxes_only_its_own_commit(container: Container) -> None:
    tracking = tracking_recorder(container.queues)
    runner = container.runners[0]
    runner.position = 7
    with container.pool.connection() as conn:
        with conn.transaction():  # seen from inside: the setting that its commit will use
            checkpoint(conn, tracking, [runner], None)
            assert conn.execute("SHOW synchronous_commit").fetchone() == {"synchronous_commit": "off"}
        checkpoint(conn, tracking, [runner], "x:7")  # on its own (autocommit), as the projector runs it
        assert conn.execute("SHOW synchronous_commit").fetchone() == {"synchronous_commit": "on"}  # no leak
        stored = conn.execute(
            f"SELECT notification_id FROM {tracking.tracking_table_name} WHERE application_name = %s",
            (runner.projection.name,),
        ).fetchone()
    assert stored == {"notification_id": 7}


def test_the_rebuild_moving_the_live_tracking_waits_for_the_flush(container: Container) -> None:
    tracking = tracking_recorder(container.queues)
    table = Identifier(container.database.schema, tracking.tracking_table_name)
    with container.pool.connection() as conn, conn.transaction():
        record_positions(conn, table, {"queues": 9}, "queues:9")
        assert conn.execute("SHOW synchronous_commit").fetchone() == {"synchronous_commit": "on"}
