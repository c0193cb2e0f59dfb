"""Notifications over HTTP: a user's unexpired notifications, and a backend sending one."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import get, post
from litestar.params import Parameter

from domain.commands import NotificationSent, SendNotification
from domain.errors import InvalidCommandError
from entrypoints.auth import require_self
from entrypoints.bootstrap import Container
from entrypoints.submit import CallerRequest, new_id, run


class NotificationIn(msgspec.Struct, forbid_unknown_fields=True):
    user_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    data: dict[str, Any] = {}


class NotificationOut(msgspec.Struct):
    notification_id: str
    user_id: str
    type: str
    data: dict[str, Any]
    created_at: int  # epoch ms
    expires_at: int  # epoch ms: created_at + LINEUP_NOTIFICATION_TTL


@get(
    "/users/{user_id:str}/notifications",
    sync_to_thread=True,
    tags=["notifications"],
    summary="The user's unexpired notifications created at or after `since` (epoch ms), oldest first",
)
def notifications_of_user(
    user_id: str,
    request: CallerRequest,
    container: Container,
    since: Annotated[int, Parameter(ge=0, description="epoch ms")] = 0,
) -> list[NotificationOut]:
    require_self(request.user, user_id)
    container.caught_up()
    return [msgspec.convert(row, NotificationOut) for row in container.notifications.for_user(user_id, since)]


@post("/notifications", status_code=201, tags=["notifications"], summary="Service: send a notification to a user")
async def send_notification(
    request: CallerRequest, container: Container, data: NotificationIn | None = None
) -> NotificationOut:
    if data is None:
        raise InvalidCommandError('a JSON body is required, e.g. {"user_id": "u1", "type": "promo", "data": {}}')
    notification_id = uuid.UUID(new_id())
    command = SendNotification(request.user, notification_id, data.user_id, data.type, data.data)
    sent = await run(container, command)
    assert isinstance(sent, NotificationSent)
    ttl_ms = container.settings.notification_ttl * 1000
    return NotificationOut(
        sent.notification_id, sent.user_id, sent.type, sent.data, sent.created_at, sent.created_at + ttl_ms
    )
