"""Notifications a backend sends to a user (`POST /notifications`): one aggregate each.

Notifications about queue moments and Stripe events are not aggregates: the notifications
projection derives them from those events, so they exist exactly once per event.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import InvalidCommandError

MAX_TYPE_LENGTH = 100


class Notification(Aggregate):
    class Sent(Aggregate.Created):
        notification_id: str
        user_id: str
        type: str
        data: dict[str, Any]
        sender_id: str
        at: int

    @staticmethod
    def create_id(notification_id: str) -> UUID:
        return UUID(notification_id)

    @event(Sent)
    def __init__(  # noqa: PLR0913
        self,
        notification_id: str,
        user_id: str,
        type: str,
        data: dict[str, Any],
        sender_id: str,
        at: int,
    ) -> None:
        self.user_id, self.type, self.sender_id, self.at = user_id, type, sender_id, at
        del notification_id, data

    @classmethod
    def send(  # noqa: PLR0913
        cls, notification_id: UUID, user_id: str, kind: str, data: dict[str, Any], sender_id: str, at: int
    ) -> Notification:
        if not user_id:
            raise InvalidCommandError("user_id must not be empty")
        if not kind or len(kind) > MAX_TYPE_LENGTH:
            raise InvalidCommandError(f"type must be 1 to {MAX_TYPE_LENGTH} characters")
        return cls(
            notification_id=str(notification_id), user_id=user_id, type=kind, data=data, sender_id=sender_id, at=at
        )
