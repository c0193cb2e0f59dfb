"""Typed rule errors, each with the contract's error code; entrypoints map codes to HTTP statuses."""

from __future__ import annotations

from typing import ClassVar


class QueueError(Exception):
    """Base of every rule a queue command can break."""

    code: ClassVar[str] = "conflict"


class NotFoundError(QueueError):
    """No such thing (a read found nothing)."""

    code: ClassVar[str] = "not_found"


class QueueNotFoundError(QueueError):
    """No queue has been opened for this event."""

    code: ClassVar[str] = "not_found"


class EntryNotFoundError(QueueError):
    """The queue has no active entry with this id (or for this user)."""

    code: ClassVar[str] = "not_found"


class NotOwnerError(QueueError):
    """Only the queue's owner (or a service) may do this."""

    code: ClassVar[str] = "forbidden"


class AlreadyOpenError(QueueError):
    """A queue was already opened for this event."""

    code: ClassVar[str] = "already_open"


class QueueClosedError(QueueError):
    """The queue is closed."""

    code: ClassVar[str] = "queue_closed"


class QueuePausedError(QueueError):
    """The queue is paused and admits nobody."""

    code: ClassVar[str] = "queue_paused"


class QueueFullError(QueueError):
    """The queue has reached its capacity of waiting entries."""

    code: ClassVar[str] = "queue_full"


class QueueEmptyError(QueueError):
    """Nobody is waiting."""

    code: ClassVar[str] = "queue_empty"


class NotCalledError(QueueError):
    """Only a called entry can be completed."""

    code: ClassVar[str] = "not_called"


class PaymentRequiredError(QueueError):
    """The queue admits only users whose payment succeeded."""

    code: ClassVar[str] = "payment_required"


class InvalidCommandError(QueueError):
    """A command's values break a rule of its own (for example a capacity below 1)."""

    code: ClassVar[str] = "bad_request"
