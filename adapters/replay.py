"""What a projection would write for a range of the log, computed without writing anything."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eventsourcing.utils import get_topic

from projections.recording import Recording, recording_writer, writer_interface

if TYPE_CHECKING:
    from collections.abc import Iterator

    from adapters.postgres.log import EventLog
    from projections.base import Projection
    from projections.recording import Call


def replay(log: EventLog, projection: Projection[Any], start: int = 1, stop: int | None = None) -> Iterator[Call]:
    """The writer calls `projection` makes for the events at positions `start..stop` (inclusive),
    in log order: the real projection code runs against a recording writer."""
    recording = Recording()
    writer: Any = recording_writer(writer_interface(projection), recording)
    topics = {get_topic(cls) for cls in projection.event_types()}  # the runner decodes only these too
    for notification in log.notifications(start - 1):
        if stop is not None and notification.id > stop:
            return
        if notification.topic not in topics:
            continue
        recording.position = notification.id
        projection.process_at(notification.id, log.app.mapper.to_domain_event(notification), writer)
        yield from recording.take()
