"""The one list of read models: `lineup serve`, status, replay, rebuild and verify all read it here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from adapters.postgres import notifications, queues, stripe
from entrypoints.settings import Settings
from projections.base import Projection
from projections.notifications import NotificationsProjection
from projections.queues import QueuesProjection
from projections.stripe import StripeProjection


@dataclass(frozen=True)
class ReadModel:
    """A projection, the PostgreSQL writer it runs with (`writer(cursor)`, on the projector's
    cursor), the tables that writer owns and the DDL that creates them."""

    projection: Projection[Any]
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
        ReadModel(QueuesProjection(), queues.PostgresQueuesWriter, queues.TABLES, queues.DDL),
        ReadModel(
            NotificationsProjection(),
            notifications_writer,
            notifications.TABLES,
            notifications.DDL,
        ),
        ReadModel(StripeProjection(), stripe.PostgresStripeWriter, stripe.TABLES, stripe.DDL),
    ]
    return {model.name: model for model in models}
