"""Typed rule errors of the queue context; entrypoints map each to an HTTP status in one place."""

from __future__ import annotations


class QueueError(Exception):
    """Base of every rule a queue command can break."""


class QueueNotFoundError(QueueError):
    """No queue has been opened for this event."""


class EntryNotFoundError(QueueError):
    """The queue has no active entry with this id (or for this user)."""


class NotOwnerError(QueueError):
    """Only the queue's owner (or a service) may do this."""


class AlreadyOpenError(QueueError):
    """A queue was already opened for this event."""


class QueueClosedError(QueueError):
    """The queue is closed."""


class QueuePausedError(QueueError):
    """The queue is paused and admits nobody."""


class QueueFullError(QueueError):
    """The queue has reached its capacity of waiting entries."""


class QueueEmptyError(QueueError):
    """Nobody is waiting."""


class NotCalledError(QueueError):
    """Only a called entry can be completed."""


class PaymentRequiredError(QueueError):
    """The queue admits only users whose payment succeeded."""


class InvalidCommandError(QueueError):
    """A command's values break a rule of its own (for example a capacity below 1)."""
