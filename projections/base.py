"""What every projection is: a name, and a pure mapping from one domain event to writer calls."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Generic, TypeVar

W = TypeVar("W")


class Writer:
    """What every projection's writer has besides its intent-named methods (its ABC derives from this)."""

    position: int = 0
    """The log position of the event being processed; set by whoever feeds events to the projection
    (`Projection.process_at`, or the rebuild's loop), used to order notifications created at the same time."""


class Projection(ABC, Generic[W]):
    """Turns domain events into read-model changes, expressed as calls on a writer `W`.

    A projection holds no state and reads nothing: every change is computed from the event,
    so processing the log again from position zero gives the same rows. The runner (an
    adapter) decides transactions, batching and tracking.
    """

    name: ClassVar[str]

    @abstractmethod
    def process(self, domain_event: object, writer: W) -> None:
        """Express `domain_event` as writer calls; events it does not know are ignored."""

    def process_at(self, position: int, domain_event: object, writer: W) -> None:
        """`process` the event at log `position`, the writer told that position first: what feeders call."""
        if isinstance(writer, Writer):
            writer.position = position
        self.process(domain_event, writer)

    @classmethod
    def event_types(cls) -> tuple[type, ...]:
        """The event classes `process` handles (its singledispatch registrations): a runner need
        not decode the others."""
        registry = getattr(cls.__dict__.get("process"), "dispatcher", None)
        return tuple(t for t in getattr(registry, "registry", {}) if t is not object)
