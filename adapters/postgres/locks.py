"""Per-queue advisory locks: writers in different processes take turns instead of colliding."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from adapters.postgres.database import session_name
from adapters.postgres.eventstore import stored_version

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from uuid import UUID

    from adapters.postgres.database import Database

log = logging.getLogger(__name__)
LOCK_SQL = "SELECT pg_advisory_lock(k) FROM (SELECT DISTINCT unnest(%s::bigint[]) AS k ORDER BY 1) AS keys"
# One index probe per queue (a correlated subquery: its plan uses the primary key whatever the
# parameter, so it may stay prepared, unlike `= ANY(ids)`: see changes.UNPREPARED).
VERSIONS_SQL = (
    f"SELECT q.id, {stored_version('{events}', 'q.id')} AS version"  # noqa: S608 - constants only
    " FROM unnest(%s::uuid[]) AS q(id)"
)


class QueueLocks:
    """Session-level advisory locks on one dedicated connection, used by one writer thread.

    Without them, two processes appending to the same popular queue keep invalidating each
    other's loaded version and retry whole batches; with them each batch loads, applies and
    commits while the other process waits a moment. Keys are taken in sorted order (no
    deadlock between batches that span several queues) and all released after the batch.

    `hold` yields each queue's stored version, read in the same round trip once the locks are
    taken: a writer whose cached queue is at that version need not read the store for it.
    """

    def __init__(self, database: Database, events_table: str) -> None:
        self.database = database
        self.versions_sql = sql.SQL(VERSIONS_SQL).format(events=sql.Identifier(events_table))
        self._conn: psycopg.Connection[Any] | None = None

    @contextlib.contextmanager
    def hold(self, queue_ids: Iterable[UUID]) -> Iterator[Mapping[UUID, int | None]]:
        ids = sorted(set(queue_ids))
        keys = sorted({self.database.lock_key(queue_id.bytes) for queue_id in ids})
        if not keys:  # e.g. a batch of Stripe events: no queue, no round trips
            yield {}
            return
        conn = self._connection()
        try:
            with conn.pipeline():  # the version read queues behind the lock: one round trip
                conn.execute(LOCK_SQL, (keys,))
                versions = conn.execute(self.versions_sql, (ids,))
            stored = {row["id"]: row["version"] for row in versions.fetchall()}
        except psycopg.Error:
            self.close()  # a broken session holds nothing; the next batch reconnects
            raise
        try:
            yield stored
        finally:
            try:
                conn.execute("SELECT pg_advisory_unlock_all()")
            except psycopg.Error:
                log.warning("could not release queue locks; dropping the session releases them")
                self.close()

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self.database.connect(application_name=session_name("lineup-locks"))
        return self._conn
