"""eventsourcing's PostgreSQL process recorder, appending a batch in one statement.

eventsourcing appends a batch in a pipelined transaction of about six statements (tracking upsert,
SET LOCAL lock_timeout, LOCK TABLE, NOTIFY, INSERT, COMMIT) and sends the events as one array of a
composite type, which psycopg dumps to text in Python, escaping every byte of every event's state.
On the server's one GIL that cost, measured (scripts/bench/insert_events.py), 1.6 ms of CPU to
append one Stripe event (~3.4 KB) and 5.9 ms for 20. Here the same transaction is one PL/pgSQL
function called in one round trip (autocommit: the statement is the transaction), with the events
as four binary arrays that psycopg's C code dumps: 0.33 ms and 0.69 ms. What the transaction does
is eventsourcing's, unchanged: the table lock that keeps notification ids in commit order, the
NOTIFY, the single-row tracking upsert whose refusal is eventsourcing's IntegrityError, and the
ids returned in the batch's order (tests/integration/test_event_store.py compares both recorders).

Selected through eventsourcing's own extension point, the `PROCESS_RECORDER_TOPIC` setting
(`Database.event_store_env`); the function is created with the tables (`create_table`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError, ProgrammingError
from eventsourcing.postgres import PostgresProcessRecorder
from eventsourcing.utils import retry
from psycopg.sql import SQL, Identifier, Literal

from domain.queues import StaleReadError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from uuid import UUID

    from eventsourcing.persistence import StoredEvent, Tracking
    from eventsourcing.postgres import PostgresDatastore

TOPIC = f"{__name__}:BinaryProcessRecorder"

# eventsourcing's single-row tracking upsert as PL/pgSQL, for functions with the arguments
# `tracking_name text, tracking_id bigint`: a position not beyond the stored one is refused with
# unique_violation (which eventsourcing raises as IntegrityError), its message starting TRACKING_REFUSED.
TRACKING_REFUSED = "Failed to record tracking for "
TRACKING_UPSERT = f"""
        INSERT INTO {{tracking_table}} AS t (application_name, notification_id) VALUES (tracking_name, tracking_id)
        ON CONFLICT (application_name) DO UPDATE SET notification_id = tracking_id
        WHERE t.notification_id < tracking_id;
        IF NOT FOUND THEN
            RAISE unique_violation USING MESSAGE = '{TRACKING_REFUSED}' || tracking_name || ' ' || tracking_id;
        END IF;"""  # noqa: S608 - constants only; the table is an Identifier, formatted by psycopg

# eventsourcing's transaction, as one function: the tracking upsert, then, when there are events, the
# table lock that keeps notification ids in commit order, the NOTIFY, and the insert returning the ids
# in order. Lineup's addition: the versions a batch was decided on (`expected_ids` at
# `expected_versions`, NULL for none stored), checked under the table lock, where no other append can
# move them; a stale one refuses the batch like a taken version does (unique_violation, the message
# starting STALE_REFUSED).
STALE_REFUSED = "Stale versions for "


def stored_version(events: str, aggregate_id: str) -> str:
    """An aggregate's stored version (NULL: no events), as SQL: one index probe of the events table's
    primary key. The queue locks read versions with it, and the append function checks them with it."""
    return f"(SELECT max(e.originator_version) FROM {events} AS e WHERE e.originator_id = {aggregate_id})"  # noqa: S608 - SQL text of ours, never a value


APPEND_FUNCTION = (
    """
CREATE OR REPLACE FUNCTION {schema}.{function}(
    ids {id_type}[], versions bigint[], topics text[], states bytea[], tracking_name text, tracking_id bigint,
    expected_ids {id_type}[], expected_versions bigint[]
) RETURNS SETOF bigint LANGUAGE plpgsql AS $body$
#variable_conflict use_column
DECLARE
    stale {id_type}[];
BEGIN
    IF tracking_name IS NOT NULL THEN"""  # noqa: S608 - constants only; identifiers are formatted by psycopg
    + TRACKING_UPSERT
    + """
    END IF;
    IF cardinality(ids) > 0 OR cardinality(expected_ids) > 0 THEN
        PERFORM set_config('lock_timeout', {lock_timeout}, true);
        LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE;
        SELECT array_agg(x.id) INTO stale FROM unnest(expected_ids, expected_versions) AS x(id, version)
            WHERE """
    + stored_version("{schema}.{table}", "x.id")
    + """ IS DISTINCT FROM x.version;
        IF stale IS NOT NULL THEN
            RAISE unique_violation USING MESSAGE = '"""
    + STALE_REFUSED
    + """' || stale::text;
        END IF;
    END IF;
    IF cardinality(ids) > 0 THEN
        NOTIFY {channel};
        RETURN QUERY INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state)
            SELECT * FROM unnest(ids, versions, topics, states) RETURNING notification_id;
    END IF;
END
$body$
"""
)


# An event's state (a Stripe event is ~6 KB of JSON) is past PostgreSQL's TOAST threshold and
# compressed inline; pglz, the default, took about 1.75 times lz4's time to insert it (5,000 Stripe
# event states: scripts/bench/state_compression.py, docs/benchmarks.md), for a table ~28 % smaller.
# lz4 where the server was built with it (Debian's is; the embedded one is not), set once: the ALTER
# takes the table's strongest lock. Rows already stored keep their compression.
LZ4_STATE = """
DO $lz4$ BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals))
       AND EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = format('%I.%I', {schema_name}, {table_name})::regclass
                   AND attname = 'state' AND attcompression IS DISTINCT FROM 'l') THEN
        ALTER TABLE {schema}.{table} ALTER COLUMN state SET COMPRESSION lz4;
    END IF;
END $lz4$"""


class BinaryProcessRecorder(PostgresProcessRecorder):
    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        events_table_name: str = "stored_events",
        tracking_table_name: str = "notification_tracking",
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name, tracking_table_name=tracking_table_name)
        names = {
            "schema": Identifier(datastore.schema),
            "table": Identifier(self.events_table_name),
            "tracking_table": Identifier(datastore.schema, self.tracking_table_name),
            "channel": Identifier(self.channel_name),
            "id_type": Identifier(datastore.originator_id_type),
            "function": Identifier(f"lineup_append_{self.events_table_name}"[:63]),
            "lock_timeout": Literal(f"{datastore.lock_timeout}s"),
        }
        self.sql_create_statements.append(SQL(APPEND_FUNCTION).format(**names))
        where = {"schema_name": Literal(datastore.schema), "table_name": Literal(self.events_table_name)}
        self.sql_create_statements.append(SQL(LZ4_STATE).format(**where, **names))
        self.append_statement = SQL(
            "SELECT notification_id FROM {schema}.{function}(%b, %b, %b, %b, %s, %s, %b, %b) AS notification_id"
        ).format(**names)

    @property
    def verifies_versions(self) -> bool:
        """Whether `insert_events` checks `expected_versions` (domain.queues.Queues asks)."""
        return bool(self.datastore.single_row_tracking)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """The events and the tracking position (when given) in one statement: one round trip.
        `expected_versions` ({aggregate id: version or None}): refused (`StaleReadError`, an
        IntegrityError) unless each aggregate's stored version is still that."""
        expected: Mapping[UUID, int | None] = kwargs.get("expected_versions") or {}
        if not self.datastore.single_row_tracking:
            if expected:
                msg = "expected versions need single-row tracking (Lineup's append function)"
                raise ProgrammingError(msg)
            return super().insert_events(stored_events, **kwargs)  # type: ignore[no-any-return]
        tracking: Tracking | None = kwargs.get("tracking")
        try:
            with self.datastore.get_connection() as conn, conn.cursor() as curs:
                curs.execute(
                    self.append_statement,
                    (
                        [e.originator_id for e in stored_events],
                        [e.originator_version for e in stored_events],
                        [e.topic for e in stored_events],
                        [e.state for e in stored_events],
                        tracking.application_name if tracking else None,
                        tracking.notification_id if tracking else None,
                        list(expected),
                        list(expected.values()),
                    ),
                    prepare=True,
                )
                ids = [row["notification_id"] for row in curs.fetchall()]
        except IntegrityError as error:
            if STALE_REFUSED in str(error):
                raise StaleReadError(str(error)) from error
            raise
        return ids if stored_events else None  # as eventsourcing's recorder answers an empty batch
