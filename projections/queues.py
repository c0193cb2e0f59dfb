"""The `queues` read model: queue summaries and entries (the event's list and each user's entries)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import singledispatchmethod
from uuid import UUID

from domain.queue import CANCELLED, COMPLETED, LEFT, NO_SHOW, OPEN, PAUSED, Queue
from projections.base import Projection, Writer


class QueuesWriter(Writer, ABC):
    """Intent-named changes of the queues read model; an adapter applies them in one transaction."""

    @abstractmethod
    def queue_opened(  # noqa: PLR0913
        self,
        queue_id: UUID,
        event_id: str,
        owner_id: str,
        name: str,
        capacity: int | None,
        service_ms: int,
        *,
        requires_payment: bool,
        at: int,
    ) -> None: ...

    @abstractmethod
    def entry_joined(self, queue_id: UUID, entry_id: str, user_id: str, seq: int, at: int) -> None:
        """A waiting entry; `seq` orders entries of one queue (first come, first served)."""

    @abstractmethod
    def entry_called(self, queue_id: UUID, entry_id: str, at: int) -> None: ...

    @abstractmethod
    def entry_finished(self, queue_id: UUID, entry_id: str, status: str, reason: str | None, at: int) -> None:
        """The entry left the live list (completed or cancelled)."""

    @abstractmethod
    def average_changed(self, queue_id: UUID, average_ms: int, at: int) -> None: ...

    @abstractmethod
    def status_changed(self, queue_id: UUID, status: str, at: int) -> None: ...

    @abstractmethod
    def queue_closed(self, queue_id: UUID, at: int) -> None:
        """Status `closed`; every waiting entry is cancelled with reason `closed`."""


class QueuesProjection(Projection[QueuesWriter]):
    """Dispatches Queue events to the queues read model."""

    name = "queues"

    @singledispatchmethod
    def process(self, domain_event: object, writer: QueuesWriter) -> None:
        """Events of other aggregates change nothing here."""

    @process.register
    def _(self, domain_event: Queue.Opened, writer: QueuesWriter) -> None:
        writer.queue_opened(
            domain_event.originator_id,
            domain_event.event_id,
            domain_event.owner_id,
            domain_event.name,
            domain_event.capacity,
            domain_event.service_ms,
            requires_payment=domain_event.requires_payment,
            at=domain_event.at,
        )

    @process.register
    def _(self, domain_event: Queue.UserJoined, writer: QueuesWriter) -> None:
        e = domain_event
        writer.entry_joined(e.originator_id, e.entry_id, e.user_id, e.originator_version, e.at)

    @process.register
    def _(self, domain_event: Queue.EntryCalled, writer: QueuesWriter) -> None:
        writer.entry_called(domain_event.originator_id, domain_event.entry_id, domain_event.at)

    @process.register
    def _(self, domain_event: Queue.UserLeft, writer: QueuesWriter) -> None:
        e = domain_event
        writer.entry_finished(e.originator_id, e.entry_id, CANCELLED, LEFT, e.at)

    @process.register
    def _(self, domain_event: Queue.EntryNoShow, writer: QueuesWriter) -> None:
        e = domain_event
        writer.entry_finished(e.originator_id, e.entry_id, CANCELLED, NO_SHOW, e.at)

    @process.register
    def _(self, domain_event: Queue.EntryCompleted, writer: QueuesWriter) -> None:
        e = domain_event
        writer.entry_finished(e.originator_id, e.entry_id, COMPLETED, None, e.at)
        writer.average_changed(e.originator_id, e.average_ms, e.at)

    @process.register
    def _(self, domain_event: Queue.Paused, writer: QueuesWriter) -> None:
        writer.status_changed(domain_event.originator_id, PAUSED, domain_event.at)

    @process.register
    def _(self, domain_event: Queue.Resumed, writer: QueuesWriter) -> None:
        writer.status_changed(domain_event.originator_id, OPEN, domain_event.at)

    @process.register
    def _(self, domain_event: Queue.Closed, writer: QueuesWriter) -> None:
        writer.queue_closed(domain_event.originator_id, domain_event.at)
