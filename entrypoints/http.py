"""The HTTP API: a Litestar app factory with thin handlers over the container's use cases."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, Litestar, Response, get, post
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin

from adapters.postgres.feed import FeedFollower
from domain.commands import (
    Caller,
    CallNext,
    CloseQueue,
    Command,
    CompleteEntry,
    Joined,
    JoinQueue,
    LeaveQueue,
    MarkNoShow,
    OpenQueue,
    PauseQueue,
    ResumeQueue,
)
from domain.errors import InvalidCommandError, NotOwnerError, QueueNotFoundError
from domain.queue import EntryView, QueueSummary
from entrypoints.auth import jwt_auth, require_self
from entrypoints.bootstrap import Container
from entrypoints.errors import EXCEPTION_HANDLERS
from entrypoints.heap import freeze_startup_heap
from entrypoints.notifications_api import notifications_of_user, send_notification
from entrypoints.ops import health, metrics, ready
from entrypoints.stripe_api import link_account, payments_of_user, stripe_account_of_user, stripe_webhook
from entrypoints.submit import CallerRequest, new_id, run
from entrypoints.ws import live

MAX_BODY = 64 * 1024


class OpenQueueIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    capacity: Annotated[int, msgspec.Meta(ge=1)] | None = None
    service_seconds: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 300
    requires_payment: bool = False


class EntryOut(msgspec.Struct):
    entry_id: str
    event_id: str
    user_id: str
    position: int | None
    estimated_time: int | None
    status: str
    reason: str | None = None


class SummaryOut(msgspec.Struct):
    event_id: str
    name: str
    status: str
    waiting: int
    avg_service_seconds: float
    owner_id: str
    capacity: int | None
    requires_payment: bool


def entry_out(entry: EntryView) -> EntryOut:
    return msgspec.convert(entry, EntryOut, from_attributes=True)


def summary_out(summary: QueueSummary) -> SummaryOut:
    return msgspec.convert(summary, SummaryOut, from_attributes=True)


# The queue commands without a body, whose answer is an entry: `lineup serve` answers these in front of
# Litestar (entrypoints/fast_paths.py) with the same functions, and the routes below with them too.
async def run_for_entry(container: Container, command: Command) -> EntryOut:
    entry = await run(container, command)
    assert isinstance(entry, EntryView)
    return entry_out(entry)


async def join_command(container: Container, event_id: str, caller: Caller) -> tuple[int, EntryOut]:
    joined = await run(container, JoinQueue(event_id, caller, new_id()))
    assert isinstance(joined, Joined)
    return 201 if joined.created else 200, entry_out(joined.entry)


async def leave_command(container: Container, event_id: str, caller: Caller) -> tuple[int, EntryOut]:
    return 200, await run_for_entry(container, LeaveQueue(event_id, caller))


async def call_next_command(container: Container, event_id: str, caller: Caller) -> tuple[int, EntryOut]:
    return 200, await run_for_entry(container, CallNext(event_id, caller))


# by the path's last segment: POST /events/{event_id}/queue/<segment>
ENTRY_COMMANDS = {"join": join_command, "leave": leave_command, "call-next": call_next_command}


class QueueController(Controller):
    path = "/events/{event_id:str}/queue"
    tags = ["queues"]

    @post("/", status_code=201, summary="Open the event's queue; the caller becomes its owner")
    async def open_queue(
        self, event_id: str, request: CallerRequest, container: Container, data: OpenQueueIn | None = None
    ) -> SummaryOut:
        if data is None:
            raise InvalidCommandError('a JSON body is required, e.g. {"name": "Launch Q&A"}')
        command = OpenQueue(
            event_id, request.user, data.name, data.capacity, data.service_seconds, data.requires_payment
        )
        summary = await run(container, command)
        assert isinstance(summary, QueueSummary)
        return summary_out(summary)

    @post("/join", status_code=201, summary="Join the queue (an active entry of the caller is returned with 200)")
    async def join(self, event_id: str, request: CallerRequest, container: Container) -> Response[EntryOut]:
        status, entry = await join_command(container, event_id, request.user)
        return Response(entry, status_code=status)

    @post("/leave", status_code=200, summary="Leave the queue")
    async def leave(self, event_id: str, request: CallerRequest, container: Container) -> EntryOut:
        return (await leave_command(container, event_id, request.user))[1]

    @post("/call-next", status_code=200, summary="Owner: call the first waiting entry")
    async def call_next(self, event_id: str, request: CallerRequest, container: Container) -> EntryOut:
        return (await call_next_command(container, event_id, request.user))[1]

    @post("/entries/{entry_id:str}/complete", status_code=200, summary="Owner: complete a called entry")
    async def complete(self, event_id: str, entry_id: str, request: CallerRequest, container: Container) -> EntryOut:
        return await run_for_entry(container, CompleteEntry(event_id, request.user, entry_id))

    @post("/entries/{entry_id:str}/no-show", status_code=200, summary="Owner: cancel an entry as a no-show")
    async def no_show(self, event_id: str, entry_id: str, request: CallerRequest, container: Container) -> EntryOut:
        return await run_for_entry(container, MarkNoShow(event_id, request.user, entry_id))

    @post("/pause", status_code=200, summary="Owner: stop admitting")
    async def pause(self, event_id: str, request: CallerRequest, container: Container) -> SummaryOut:
        return await self._summary(container, PauseQueue(event_id, request.user))

    @post("/resume", status_code=200, summary="Owner: admit again")
    async def resume(self, event_id: str, request: CallerRequest, container: Container) -> SummaryOut:
        return await self._summary(container, ResumeQueue(event_id, request.user))

    @post("/close", status_code=200, summary="Owner: close; every waiting entry is cancelled")
    async def close(self, event_id: str, request: CallerRequest, container: Container) -> SummaryOut:
        return await self._summary(container, CloseQueue(event_id, request.user))

    @get("/", sync_to_thread=True, summary="Owner: the live entry list (waiting and called), in order")
    def entries(self, event_id: str, request: CallerRequest, container: Container) -> list[EntryOut]:
        container.caught_up()
        queue = container.reader.summary(event_id)
        if queue is None:
            raise QueueNotFoundError(f"no queue is open for event {event_id}")
        if not request.user.is_service and request.user.user_id != queue["owner_id"]:
            raise NotOwnerError(f"only the owner of the queue of event {event_id} may read its entries")
        return [entry_out(entry) for entry in container.reader.event_entries(queue)]

    @get("/summary", sync_to_thread=True, summary="Anyone: the queue's summary")
    def summary(self, event_id: str, container: Container) -> SummaryOut:
        container.caught_up()
        queue = container.reader.summary(event_id)
        if queue is None:
            raise QueueNotFoundError(f"no queue is open for event {event_id}")
        return SummaryOut(
            event_id=queue["event_id"],
            name=queue["name"],
            status=queue["status"],
            waiting=queue["waiting"],
            avg_service_seconds=queue["average_ms"] / 1000,
            owner_id=queue["owner_id"],
            capacity=queue["capacity"],
            requires_payment=queue["requires_payment"],
        )

    @staticmethod
    async def _summary(container: Container, command: Command) -> SummaryOut:
        summary = await run(container, command)
        assert isinstance(summary, QueueSummary)
        return summary_out(summary)


@get("/users/{user_id:str}/queue", sync_to_thread=True, tags=["queues"], summary="The user's active entries")
def user_queue(user_id: str, request: CallerRequest, container: Container) -> list[EntryOut]:
    require_self(request.user, user_id)
    container.caught_up()
    return [entry_out(entry) for entry in container.reader.user_entries(user_id)]


def create_app(container: Container, *, freeze_heap: bool = False) -> Litestar:
    """The ASGI app over a built container (the caller owns the container's lifetime)."""
    auth = jwt_auth(container.jwt_secret)
    follower = FeedFollower(container.database, container.hub)
    return Litestar(
        route_handlers=[
            QueueController,
            user_queue,
            notifications_of_user,
            send_notification,
            stripe_account_of_user,
            payments_of_user,
            link_account,
            stripe_webhook,
            health,
            ready,
            metrics,
            live,
        ],
        dependencies={"container": Provide(lambda: container, use_cache=True, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        on_app_init=[auth.on_app_init],
        request_max_body_size=MAX_BODY,
        openapi_config=OpenAPIConfig(
            title="Lineup",
            version="0.1.0",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin(), JsonRenderPlugin()],
        ),
        on_startup=[follower.start, *([freeze_startup_heap] if freeze_heap else [])],
        on_shutdown=[follower.stop, container.close],
        debug=False,
    )
