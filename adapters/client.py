"""A small asyncio client of `/ws`: live views of subscriptions that resume by cursor after a dropped connection."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from itertools import count
from typing import TYPE_CHECKING, Any, Self

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from adapters import gateway as wire

if TYPE_CHECKING:
    from collections.abc import Callable

FATAL = frozenset({4400, 4401, 4429})  # closes that a reconnect would only repeat
Row = dict[str, Any]
Event = wire.Snapshot | wire.ChangeFrame
_decoder: msgspec.json.Decoder[wire.Outbound] = msgspec.json.Decoder(wire.Outbound)


class ClientError(Exception):
    """Raised by views and `LiveClient` calls once they cannot go on."""


class SubscriptionError(ClientError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


class ServerClosed(ClientError):
    """The server closed the connection with a fatal code (4400, 4401, 4429): not retried."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed by the server with {code} {reason}".strip())
        self.code, self.reason = code, reason


class ClientClosed(ClientError):
    """The client was closed (or the view unsubscribed) by its user."""


def key_of(query: str, row: Row) -> str:
    """The key of a snapshot row, the same as change frames name it."""
    if query == "queue.summary":
        return str(row["event_id"])
    ids = ("entry_id", "notification_id", "account_id", "payment_intent_id")
    return str(next((row[name] for name in ids if row.get(name) is not None), ""))


class LiveView:
    """The rows of one subscription (key -> row) at `cursor`, and the frames applied to them."""

    def __init__(self, client: LiveClient, sub_id: str, query: str, args: dict[str, Any], *, events: bool) -> None:
        self.client, self.id, self.query, self.args, self.events = client, sub_id, query, args, events
        self.rows: dict[str, Row] = {}
        self.cursor: int | None = None  # of the last frame applied
        self.failure: ClientError | None = None
        self.connection = 0  # the connection this view was last subscribed on
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._waiters: set[asyncio.Future[None]] = set()

    def apply(self, message: Event) -> None:
        if isinstance(message, wire.Snapshot):  # initial, or reset: replaces everything
            self.rows.clear()
            self.rows.update((key_of(self.query, row), row) for row in message.rows)
        elif message.op == "remove" or message.row is None:
            self.rows.pop(message.key, None)
        else:
            self.rows[message.key] = message.row
        self.cursor = message.cursor
        if self.events:
            self._events.put_nowait(message)
        self._wake()

    def fail(self, error: ClientError) -> None:
        if self.failure is None:
            self.failure = error
            self._events.put_nowait(None)
            self._wake()

    async def next_event(self, timeout: float | None = None) -> Event:
        """The next applied snapshot or change frame; raises the view's failure after the last one."""
        async with asyncio.timeout(timeout):
            message = await self._events.get()
        if message is None:
            self._events.put_nowait(None)  # every later call ends the same way
            assert self.failure is not None
            raise self.failure
        return message

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.next_event()
        except ClientClosed:
            raise StopAsyncIteration from None

    async def wait_for(
        self, predicate: Callable[[dict[str, Row]], bool], timeout: float | None = 10.0
    ) -> dict[str, Row]:
        """Return the rows once `predicate(rows)` holds (TimeoutError after `timeout` seconds)."""
        async with asyncio.timeout(timeout):
            while not predicate(self.rows):
                if self.failure is not None:
                    raise self.failure
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.add(waiter)
                try:
                    await waiter
                finally:
                    self._waiters.discard(waiter)
        return self.rows

    async def close(self) -> None:
        await self.client.unsubscribe(self)

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


class LiveClient:
    """One connection, many `LiveView`s; one reader task; reconnects with backoff and resumes each view."""

    def __init__(
        self, url: str, token: str | Callable[[], str], *, backoff_initial: float = 0.1, backoff_max: float = 5.0
    ) -> None:
        self.url, self.token = url, token
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.open_timeout = 10.0
        self.views: dict[str, LiveView] = {}
        self.cursor: int | None = None  # of the last `ready`
        self.connections = 0  # successful connects so far
        self.failure: ClientError | None = None
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = count(1)
        self._pongs: deque[asyncio.Future[None]] = deque()
        self._delay, self._opened_at = backoff_initial, 0.0  # a connection dropped at once backs off further

    async def __aenter__(self) -> Self:
        self._ws = await self._open()
        self._reader = asyncio.create_task(self._run(self._ws))
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        self._finish(ClientClosed("the client was closed"))

    async def subscribe(
        self, query: str, args: dict[str, Any], *, timeout: float | None = 10.0, events: bool = True
    ) -> LiveView:
        """A view of `query`, returned once its snapshot is applied; SubscriptionError if refused.
        `events=False`: frames are applied but not kept for `next_event` (nothing accumulates)."""
        if self.failure is not None:
            raise self.failure
        view = LiveView(self, f"v{next(self._ids)}", query, args, events=events)
        self.views[view.id] = view
        if self._ws is not None:  # else the reconnect in progress subscribes it
            view.connection = self.connections
            await self._send(wire.Subscribe(id=view.id, query=query, args=args))
        try:
            await view.wait_for(lambda _: view.cursor is not None, timeout)
        except TimeoutError:
            await self.unsubscribe(view)
            raise
        return view

    async def unsubscribe(self, view: LiveView) -> None:
        if self.views.pop(view.id, None) is not None:
            await self._send(wire.Unsubscribe(id=view.id))
        view.fail(ClientClosed(f"{view.id} was unsubscribed"))

    async def ping(self, timeout: float = 10.0) -> None:
        """A round trip to the server: every frame sent before the pong has been applied."""
        pong = asyncio.get_running_loop().create_future()
        self._pongs.append(pong)  # answered in order; a timed-out ping's pong still consumes its place
        if not await self._send(wire.Ping()):
            self._pongs.remove(pong)
            raise ClientError("not connected")
        async with asyncio.timeout(timeout):
            await pong

    # The connection ---------------------------------------------------------------------------

    def _token(self) -> str:
        return self.token() if callable(self.token) else self.token

    async def _send(self, message: wire.Frame) -> bool:
        if self._ws is None:
            return False
        try:
            await self._ws.send(wire.frame(message))
        except ConnectionClosed:  # the reader sees the drop and reconnects
            return False
        return True

    async def _open(self) -> ClientConnection:
        """Connect and authenticate; ServerClosed for a fatal refusal, other errors may be retried."""
        ws = await connect(self.url, open_timeout=self.open_timeout, max_size=None)
        try:
            await ws.send(wire.frame(wire.Auth(token=self._token())))
            async with asyncio.timeout(self.open_timeout):
                while not isinstance(message := _decoder.decode(await ws.recv()), wire.Ready):
                    pass  # nothing else is sent before `ready`
        except BaseException as error:
            await ws.close()
            code = ws.close_code
            if isinstance(error, ConnectionClosed) and code in FATAL:
                raise ServerClosed(code, ws.close_reason or "") from None
            raise
        self.cursor, self.connections = message.cursor, self.connections + 1
        self._opened_at = asyncio.get_running_loop().time()
        return ws

    async def _run(self, ws: ClientConnection) -> None:
        try:
            while True:
                with contextlib.suppress(ConnectionClosed):
                    async for text in ws:
                        await self._dispatch(_decoder.decode(text))
                self._ws = None
                self._fail_pongs()
                if ws.close_code in FATAL:
                    raise ServerClosed(ws.close_code or 0, ws.close_reason or "")
                ws = await self._reconnect()
        except ClientError as error:
            self._finish(error)
        except Exception as error:  # a frame the protocol does not allow, or a bug: end, do not hang
            self._finish(ClientError(f"the reader failed: {error!r}"))
            await ws.close()

    async def _reconnect(self) -> ClientConnection:
        loop = asyncio.get_running_loop()
        if loop.time() - self._opened_at > self.backoff_max:  # it had been up a while: start over quickly
            self._delay = self.backoff_initial
        while True:
            await asyncio.sleep(random.uniform(self.backoff_initial, self._delay))  # noqa: S311 (jitter)
            self._delay = min(self._delay * 2, self.backoff_max)
            try:
                ws = await self._open()
                while stale := [view for view in self.views.values() if view.connection != self.connections]:
                    for view in stale:  # views subscribed meanwhile are picked up by the next round
                        view.connection = self.connections
                        resume = wire.Subscribe(id=view.id, query=view.query, args=view.args, after=view.cursor)
                        await ws.send(wire.frame(resume))
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake):
                continue
            self._ws = ws
            return ws

    async def _dispatch(self, message: wire.Outbound) -> None:
        if isinstance(message, wire.Snapshot | wire.ChangeFrame):
            view = self.views.get(str(message.id))
            if view is not None:
                view.apply(message)
        elif isinstance(message, wire.Error):
            view = self.views.pop(str(message.id), None)
            if view is not None:
                view.fail(SubscriptionError(message.error, message.detail))
        elif isinstance(message, wire.Ready):
            self.cursor = message.cursor
        elif isinstance(message, wire.Pong):
            if self._pongs and not (pong := self._pongs.popleft()).done():
                pong.set_result(None)
        elif isinstance(message, wire.AuthExpired) and callable(self.token):
            await self._send(wire.Auth(token=self.token()))

    def _fail_pongs(self) -> None:
        while self._pongs:
            if not (pong := self._pongs.popleft()).done():
                pong.set_exception(ClientError("the connection dropped before the pong"))

    def _finish(self, error: ClientError) -> None:
        if self.failure is None:
            self.failure = error
        for view in self.views.values():
            view.fail(error)
        self._fail_pongs()
