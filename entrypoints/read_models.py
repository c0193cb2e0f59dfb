"""The one list of read models: `lineup serve`, status, replay, rebuild and verify all read it here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from adapters.postgres import notifications, queues, stripe
from entrypoints.settings import Settings
from projections.base import Projection
from projections.notifications import NotificationsProjection, NotificationsWriter
from projections.queues import QueuesProjection, QueuesWriter
from projections.stripe import StripeProjection, StripeWriter


@dataclass(frozen=True)
class ReadModel:
    """A projection, the PostgreSQL writer it runs with, and the tables that writer owns.

    `interface` is the abstract writer whose intent-named methods the projection calls (what
    `lineup replay` records); `writer(cursor)` is its PostgreSQL implementation on the
    projector's cursor; `tables` are the read model's tables and `ddl` creates them.
    """

    projection: Projection[Any]
    interface: type
    writer: Callable[[psycopg.Cursor[Any]], Any]
    tables: tuple[str, ...]
    ddl: str

    @property
    def name(self) -> str:
        return self.projection.name


def read_models(settings: Settings) -> dict[str, ReadModel]:
    """Every projection by name, in the order the projector runs them."""
    ttl_ms = settings.notification_ttl * 1000

    def notifications_writer(cursor: psycopg.Cursor[Any]) -> notifications.PostgresNotificationsWriter:
        return notifications.PostgresNotificationsWriter(cursor, ttl_ms)

    models = [
        ReadModel(QueuesProjection(), QueuesWriter, queues.PostgresQueuesWriter, queues.TABLES, queues.DDL),
        ReadModel(
            NotificationsProjection(),
            NotificationsWriter,
            notifications_writer,
            notifications.TABLES,
            notifications.DDL,
        ),
        ReadModel(StripeProjection(), StripeWriter, stripe.PostgresStripeWriter, stripe.TABLES, stripe.DDL),
    ]
    return {model.name: model for model in models}
