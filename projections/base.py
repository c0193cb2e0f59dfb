"""What every projection is: a name, and a pure mapping from one domain event to writer calls."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Generic, TypeVar

W = TypeVar("W")


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

    @classmethod
    def event_types(cls) -> tuple[type, ...]:
        """The event classes `process` handles (its singledispatch registrations): a runner need
        not decode the others."""
        registry = getattr(cls.__dict__.get("process"), "dispatcher", None)
        return tuple(t for t in getattr(registry, "registry", {}) if t is not object)
