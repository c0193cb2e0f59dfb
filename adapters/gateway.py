"""The `/ws` protocol: auth, subscriptions, snapshots at a known cursor, live changes, resume, backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import types
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from adapters.fanout import RESET, Change, Hub, Outbox, Subscription, apply_changes, change_body
from adapters.postgres.feed import ANYONE, LIVE_QUERIES, SELF, FeedReader

log = logging.getLogger(__name__)

AUTH_TIMEOUT = 10.0
EXPIRED_GRACE = 30.0
MAX_SUBSCRIPTIONS = 100
SNAPSHOT_WAIT = 10.0
CLOSE_GOING_AWAY, CLOSE_MALFORMED, CLOSE_UNAUTHENTICATED, CLOSE_AUTH_TIMEOUT, CLOSE_TOO_MANY = (
    1001,
    4400,
    4401,
    4408,
    4429,
)


class Frame(msgspec.Struct, tag_field="type", forbid_unknown_fields=True):
    """Client frames are JSON objects tagged by "type"; unknown fields are malformed."""


class Auth(Frame, tag="auth"):
    token: str


class Subscribe(Frame, tag="subscribe"):
    id: str | int
    query: str
    args: dict[str, Any] = {}
    after: int | None = None


class Unsubscribe(Frame, tag="unsubscribe"):
    id: str | int


class Ping(Frame, tag="ping"):
    pass


Inbound = Auth | Subscribe | Unsubscribe | Ping


class Ready(Frame, tag="ready"):
    cursor: int


class Snapshot(Frame, tag="snapshot"):
    id: str | int
    cursor: int
    rows: list[dict[str, Any]]
    reset: bool


class ChangeFrame(Frame, tag="change"):
    """Built by concatenation on the hot path (`Subscription.prefix` + `change_body`); this struct
    is its schema and is what tests and the client decode it with."""

    id: str | int
    cursor: int
    op: str
    key: str
    row: dict[str, Any] | None = None


class Error(Frame, tag="error"):
    error: str
    detail: str
    id: str | int | None = None


class Pong(Frame, tag="pong"):
    pass


class AuthExpired(Frame, tag="auth_expired"):
    pass


Outbound = Ready | Snapshot | ChangeFrame | Error | Pong | AuthExpired
_decoder: msgspec.json.Decoder[Inbound] = msgspec.json.Decoder(Inbound)
_encode = msgspec.json.Encoder().encode


class Socket(Protocol):
    async def receive_text(self) -> str: ...
    @property
    def write_now(self) -> Callable[[str], bool] | None: ...  # writes at once without ASGI; False: use send_text
    def send_text(self, data: str) -> Coroutine[Any, Any, None]: ...  # a coroutine: it may be stepped by hand
    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


@dataclass(frozen=True)
class Identity:
    user_id: str
    is_service: bool
    expires_at: float


class AuthError(Exception):
    """The token was refused."""


Verify = Callable[[str], Identity]  # raises AuthError


def frame(message: Frame) -> str:
    return _encode(message).decode()


class SharedSnapshots:
    """Snapshot reads of this process, one at a time per (query, arguments, since): subscribers
    arriving together (a creator goes live, thousands of fans connect) share one read instead of
    each sending the same query. A shared read serves a subscription only if its cursor is at least
    the one the process had dispatched when that subscription began buffering changes (else changes
    in between would be in neither); otherwise the subscription reads again for itself."""

    def __init__(self, reader: FeedReader) -> None:
        self.reader = reader
        self.reads = 0  # database reads made (for tests and diagnostics)
        self._inflight: dict[tuple[str, str, int], asyncio.Future[tuple[int, dict[str, Any]]]] = {}

    async def read(self, query: str, args: str, since: int, floor: int) -> tuple[int, dict[str, Any]]:
        key = (query, args, since)
        shared = self._inflight.get(key)
        if shared is None:
            shared = self._inflight[key] = asyncio.ensure_future(self._read(query, args, since))
            shared.add_done_callback(lambda _: self._inflight.pop(key, None))  # (the one under `key`)
        cursor, rows = await asyncio.shield(shared)
        if cursor < floor:
            cursor, rows = await self._read(query, args, since)
        return cursor, dict(rows)  # each subscriber brings its own copy forward

    async def _read(self, query: str, args: str, since: int) -> tuple[int, dict[str, Any]]:
        self.reads += 1
        return await asyncio.to_thread(self.reader.snapshot, query, args, since)


class Closed(Exception):
    """The session has ended (we closed it, or the peer went away)."""


_open_sessions: weakref.WeakSet[Session] = weakref.WeakSet()  # of this process


@types.coroutine
def _resume(coroutine: Coroutine[Any, Any, None], blocked_on: Any) -> Generator[Any, Any, None]:
    """Go on running, inside the awaiting task, a coroutine that was stepped by hand with
    `send(None)` and suspended on `blocked_on` (what it yielded: a future, or None for a bare
    yield). Each value the task sends or throws in is passed on, like `yield from` would."""
    while True:
        try:
            sent = yield blocked_on
        except BaseException as error:  # passed on as it is, cancellation included
            try:
                blocked_on = coroutine.throw(error)
            except StopIteration:
                return
        else:
            try:
                blocked_on = coroutine.send(sent)
            except StopIteration:
                return


class Expiries:
    """The sessions' token expiries on one timer of the event loop, not one each: a timer per
    connection (uvloop's handle and its libuv timer) was 0.5 KiB of each idle connection's ~28
    (scripts/bench/live.py, 2026-12-07). A firing calls `_expired` on every session due by then;
    it is up to `SLACK` late, so that expiries close together share one firing and a scan."""

    SLACK = 0.25  # seconds

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due: dict[Session, float] = {}  # loop times
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = float("inf")

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Expiries:
        expiries = _expiries.get(loop)
        if expiries is None:
            expiries = _expiries[loop] = cls(loop)
        return expiries

    def set(self, session: Session, at: float) -> None:
        """`session._expired()` once the loop's time is `at` (replacing what was set for it)."""
        self._due[session] = at
        if at < self._armed_for:
            self._arm(at)

    def discard(self, session: Session) -> None:
        self._due.pop(session, None)  # a timer armed for it finds nothing due then: harmless

    def _arm(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = at
        self._timer = self._loop.call_at(at + self.SLACK, self._fire)

    def _fire(self) -> None:
        self._timer, self._armed_for = None, float("inf")
        now = self._loop.time()
        due = [session for session, at in self._due.items() if at <= now]
        for session in due:
            del self._due[session]
        if self._due:
            self._arm(min(self._due.values()))
        for session in due:
            try:
                session._expired()
            except Exception:  # one session's failure must not keep the others' from expiring
                log.exception("expiring a session failed")


_expiries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Expiries] = weakref.WeakKeyDictionary()


async def close_all_sessions(code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> None:
    """Close every open session of this process (on shutdown: 1001, before the server drops them)."""
    sessions = list(_open_sessions)
    await asyncio.gather(*(session.shutdown(code, reason) for session in sessions), return_exceptions=True)


class Session:
    """One WebSocket connection: many subscriptions, frames in cursor order, one outbox."""

    def __init__(  # noqa: PLR0913
        self,
        socket: Socket,
        hub: Hub,
        reader: FeedReader,
        verify: Verify,
        settle: Callable[[bool], None],
        snapshots: SharedSnapshots | None = None,
    ) -> None:
        self.socket, self.hub, self.reader, self.verify = socket, hub, reader, verify
        self.snapshots = snapshots if snapshots is not None else SharedSnapshots(reader)
        self.settle = settle  # blocks until reads reflect every command acknowledged before the call
        # (its argument: whether the query's rows are derived ones, published after the projection)
        self.outbox = Outbox()
        self.subscriptions: dict[str | int, Subscription] = {}
        self._since: dict[str | int, int] = {}  # notifications.user's option, per subscription id
        self.identity: Identity | None = None
        # the grace timer after the token expired (the expiry itself is on `Expiries`' shared timer)
        self._expiry: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sender: asyncio.Future[None] | None = None
        self._writing = False  # frames are being written from _write_now
        self._closed = False

    async def run(self) -> None:
        _open_sessions.add(self)
        self.outbox.on_ready = self._wake_sender
        self._direct()
        try:
            await self._authenticate()
            while True:
                try:
                    text = await self.socket.receive_text()
                except Exception:  # the peer closed or went away
                    return
                await self._handle(text)
        except Closed:
            pass
        finally:
            for subscription in self.subscriptions.values():
                self.hub.discard(subscription)
            self._closed = True  # over: nothing is written any more
            self.outbox.on_ready = None
            self._direct()
            for task in [*([self._sender] if self._sender else []), *self._tasks]:
                task.cancel()
            Expiries.of(asyncio.get_running_loop()).discard(self)
            if self._expiry is not None:
                self._expiry.cancel()

    async def shutdown(self, code: int, reason: str) -> None:
        with contextlib.suppress(Closed):
            await self.close(code, reason)

    async def close(self, code: int, reason: str) -> None:
        if not self._closed:
            self._closed = True
            self._direct()
            with contextlib.suppress(Exception):
                await self.socket.close(code=code, reason=reason)
        raise Closed

    # Inbound ------------------------------------------------------------------------------

    async def _authenticate(self) -> None:
        try:
            text = await asyncio.wait_for(self.socket.receive_text(), AUTH_TIMEOUT)
        except TimeoutError:
            await self.close(CLOSE_AUTH_TIMEOUT, "no auth frame within 10 s")
        except Exception:  # gone before saying anything
            raise Closed from None
        message = await self._decode(text)
        if not isinstance(message, Auth):
            await self.close(CLOSE_UNAUTHENTICATED, "the first frame must be auth")
        assert isinstance(message, Auth)
        await self._accept_token(message.token)
        self.outbox.put(frame(Ready(cursor=self.hub.dispatched)))

    async def _accept_token(self, token: str) -> None:
        try:
            identity = self.verify(token)
        except AuthError as error:
            await self.close(CLOSE_UNAUTHENTICATED, f"invalid token: {error}")
            raise  # unreachable: close raises Closed
        if self.identity is not None and (identity.user_id, identity.is_service) != (
            self.identity.user_id,
            self.identity.is_service,
        ):  # subscriptions were authorized for that user and role
            await self.close(CLOSE_UNAUTHENTICATED, "a refreshed token must name the same user and role")
        self.identity = identity
        if self._expiry is not None:  # the grace after an expiry: this token came in time
            self._expiry.cancel()
            self._expiry = None
        loop = asyncio.get_running_loop()
        delay = max(0.0, identity.expires_at - time.time())
        Expiries.of(loop).set(self, loop.time() + delay)

    async def _decode(self, text: str) -> Inbound:
        try:
            return _decoder.decode(text)
        except msgspec.DecodeError as error:
            await self.close(CLOSE_MALFORMED, f"malformed frame: {error}"[:120])
            raise  # unreachable

    async def _handle(self, text: str) -> None:
        message = await self._decode(text)
        if isinstance(message, Ping):
            self.outbox.put(frame(Pong()))
        elif isinstance(message, Auth):
            await self._accept_token(message.token)
        elif isinstance(message, Unsubscribe):
            subscription = self.subscriptions.pop(message.id, None)
            self._since.pop(message.id, None)
            if subscription is not None:
                self.hub.discard(subscription)
        else:
            await self._subscribe(message)

    async def _subscribe(self, message: Subscribe) -> None:
        live = LIVE_QUERIES.get(message.query)
        if live is None:
            self._error(message.id, "unknown_query", f"no live query named {message.query!r}")
            return
        name = live.argument
        args, since = message.args.get(name), message.args.get("since", 0)
        if (
            not set(message.args) <= {name, *live.options}
            or not isinstance(args, str)
            or not args
            or not isinstance(since, int)
            or isinstance(since, bool)
            or since < 0
        ):
            options = "".join(f', "{option}"?: ...' for option in live.options)
            self._error(message.id, "bad_args", f'{message.query} takes {{"{name}": "..."{options}}}')
            return
        if message.id not in self.subscriptions and len(self.subscriptions) >= MAX_SUBSCRIPTIONS:
            await self.close(CLOSE_TOO_MANY, f"more than {MAX_SUBSCRIPTIONS} subscriptions")
        old = self.subscriptions.pop(message.id, None)
        if old is not None:
            self.hub.discard(old)
        subscription = Subscription(message.id, message.query, args, self.outbox)
        self.subscriptions[message.id] = subscription
        self._since[message.id] = since
        self.hub.add(subscription)  # buffering from now on, before anything is read
        self._spawn(self._start(subscription, message.after, self.hub.dispatched))

    async def _allowed(self, query: str, args: str) -> bool:
        """As each query's `access` says: anyone, the user it names, or the queue's owner; services: all."""
        identity = self.identity
        assert identity is not None
        access = LIVE_QUERIES[query].access
        if identity.is_service or access == ANYONE:
            return True
        if access == SELF:
            return args == identity.user_id
        return await asyncio.to_thread(self.reader.owner, args) == identity.user_id

    def _error(self, sub_id: str | int | None, code: str, detail: str) -> None:
        self.outbox.put(frame(Error(error=code, detail=detail, id=sub_id)))

    # Snapshots and catch-up -------------------------------------------------------------------

    async def _start(self, subscription: Subscription, after: int | None, floor: int) -> None:
        """`floor`: the cursor this process had dispatched when the subscription began buffering."""
        # a subscription sees the commands acknowledged before it (derived rows: their publication too)
        await asyncio.to_thread(self.settle, LIVE_QUERIES[subscription.query].derived)
        if not await self._allowed(subscription.query, subscription.args):  # (an owner is read after settling)
            if self.subscriptions.get(subscription.id) is subscription:
                del self.subscriptions[subscription.id]
                self.hub.discard(subscription)
            self._error(subscription.id, "forbidden", f"you may not follow {subscription.query} of {subscription.args}")
            return
        if after is not None and await self._resume(subscription, after):
            return
        await self._snapshot(subscription, reset=after is not None, floor=floor)

    async def _snapshot(self, subscription: Subscription, *, reset: bool, floor: int) -> None:
        since = self._since.get(subscription.id, 0)
        cursor, rows = await self.snapshots.read(subscription.query, subscription.args, since, floor)
        await self._reach(cursor)
        # No await from here on: nothing can be dispatched in between.
        if self.subscriptions.get(subscription.id) is not subscription:
            return  # unsubscribed meanwhile
        apply_changes(rows, [c for c in subscription.buffer if c.cursor > cursor])
        at = max(cursor, self.hub.dispatched, self.outbox.sent_cursor)
        snapshot = frame(Snapshot(id=subscription.id, cursor=at, rows=list(rows.values()), reset=reset))
        self.outbox.put(snapshot, at)
        subscription.buffer.clear()
        subscription.pending = False

    async def _resume(self, subscription: Subscription, after: int) -> bool:
        """Send exactly the changes after `after`; False when they are no longer all kept."""
        reader = self.reader.changes_after
        head, oldest, missed = await asyncio.to_thread(reader, subscription.query, subscription.args, after)
        if after > head or (after < head and (oldest is None or after < oldest - 1)):
            return False
        await self._reach(head)
        if self.subscriptions.get(subscription.id) is not subscription:
            return True
        pending = missed + [c for c in subscription.buffer if c.cursor > head]
        if pending and pending[0].cursor <= self.outbox.sent_cursor:
            # Frames with higher cursors already went out for other subscriptions: keep the
            # connection in cursor order by sending each key's latest change at the current cursor.
            pending = self._coalesced(pending, max(self.hub.dispatched, self.outbox.sent_cursor))
        for change in pending:
            self.outbox.put(subscription.prefix + change_body(change), change.cursor)
        subscription.buffer.clear()
        subscription.pending = False
        return True

    async def _reach(self, cursor: int) -> None:
        """Wait (as long as it takes) until this process has dispatched every change up to `cursor`:
        releasing a snapshot earlier would put it before frames with lower cursors."""
        while not await self.hub.reached(cursor, SNAPSHOT_WAIT):
            log.warning("change feed follower is more than %.0f s behind cursor %d", SNAPSHOT_WAIT, cursor)

    @staticmethod
    def _coalesced(changes: list[Change], cursor: int) -> list[Change]:
        latest: dict[str, Change] = {}
        for change in changes:
            latest.pop(change.key, None)
            latest[change.key] = change
        return [Change(cursor, c.query, c.args, c.key, c.op, c.row) for c in latest.values()]

    # Outbound ---------------------------------------------------------------------------------

    def _wake_sender(self) -> None:
        """A frame was queued. If nothing is being sent, write now, from the caller (the feed
        follower's dispatch loop, usually): straight to the transport where the socket allows it
        (adapters/direct_frames.py), else through ASGI. The ASGI send of a writable socket completes without
        suspending (uvicorn's websockets-sansio `send` awaits an Event that is set, then writes to
        the transport), so stepping its coroutine by hand costs no task and no loop round trip,
        and the first subscribers get their bytes before the loop has reached the last. A send
        that does suspend (the transport is paused: a slow client) is handed to a sender task,
        and the frames behind it wait in the outbox as before."""
        if self._sender is None and not self._closed and not self._writing:
            self._write_now()

    def _direct(self) -> None:
        """Give the outbox the socket's direct write while the session is open and no sender task
        runs; the dispatch loop then writes a change frame with nothing queued before it straight
        to the transport, skipping the queue and `_write_now`'s loop (at 1,000 sockets, the Python
        around each `send` was ~40 % of a change's dispatch: py-spy)."""
        self.outbox.write_now = None if self._closed or self._sender is not None else self.socket.write_now

    def _write_direct(self, text: str) -> bool:
        write_now = self.socket.write_now
        return write_now is not None and write_now(text)

    def _next_frame(self) -> str | None:
        """The next frame to send; an overflow marker on the way starts the reset snapshots."""
        frames = self.outbox.frames
        while frames:
            text = frames.pop(0)
            if text != RESET:
                return text
            self._reset_all()
        return None

    def _write_now(self) -> None:
        self._writing = True
        try:
            while (text := self._next_frame()) is not None:
                if self._write_direct(text):
                    continue
                send = self.socket.send_text(text)
                try:
                    blocked_on = send.send(None)
                except StopIteration:
                    continue  # written
                self._sender = asyncio.ensure_future(self._send_loop(send, blocked_on))
                self._direct()
                return
        except Exception:  # the peer went away: the receive loop sees it too
            log.debug("send failed", exc_info=True)
            self.outbox.frames.clear()
        finally:
            self._writing = False

    async def _send_loop(self, started: Coroutine[Any, Any, None] | None = None, blocked_on: Any = None) -> None:
        """Finishes a send that suspended, then sends what has queued behind it, then ends
        (the next frame is written directly again)."""
        try:
            if started is not None:
                await _resume(started, blocked_on)
            while (text := self._next_frame()) is not None:
                if not self._write_direct(text):
                    await self.socket.send_text(text)
        except asyncio.CancelledError:
            raise
        except Exception:  # the peer went away: the receive loop sees it too
            log.debug("send failed", exc_info=True)
            self.outbox.frames.clear()
        finally:
            self._sender = None
            self._direct()

    def _reset_all(self) -> None:
        """The client fell behind and its frames were dropped: fresh snapshots of everything."""
        for subscription in self.subscriptions.values():
            subscription.pending = True
            subscription.buffer.clear()
        self.outbox.lagging = False
        for subscription in list(self.subscriptions.values()):
            self._spawn(self._snapshot(subscription, reset=True, floor=self.hub.dispatched))

    def _expired(self) -> None:
        """The token's exp has passed: say so, and close 4401 unless a new auth arrives in time."""
        self.outbox.put(frame(AuthExpired()))
        self._expiry = asyncio.get_running_loop().call_later(EXPIRED_GRACE, self._spawn_close)

    def _spawn_close(self) -> None:
        self._spawn(self.shutdown(CLOSE_UNAUTHENTICATED, "token expired"))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
