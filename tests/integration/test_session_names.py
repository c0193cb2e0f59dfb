"""Lineup's sessions are named by role and process in pg_stat_activity, so PostgreSQL's work can be told apart."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from domain.queue import queue_id_for

if TYPE_CHECKING:
    from entrypoints.bootstrap import Container

NAMES = "SELECT application_name FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s"


def test_read_pool_sessions_carry_their_role_and_pid(container: Container) -> None:
    with container.pool.connection() as conn:
        row = conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None
    assert row["application_name"] == f"lineup-read {os.getpid()}"


def test_the_queue_locks_session_carries_its_role_and_pid(container: Container) -> None:
    with container.locks.hold([queue_id_for("named")]), container.pool.connection() as conn:
        sessions = conn.execute(NAMES, (f"lineup-locks {os.getpid()}",)).fetchall()
    assert len(sessions) == 1


def test_event_store_sessions_carry_their_role_and_pid(container: Container) -> None:
    """eventsourcing's own pool sets no application_name; the event store's sessions get one all the same,
    those opened while its tables were created included."""
    with container.queues.factory.datastore.get_connection() as conn:  # type: ignore[attr-defined]
        row = conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()").fetchone()
    assert row is not None
    assert row["application_name"] == f"lineup-events {os.getpid()}"
