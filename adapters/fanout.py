"""Routing change-feed rows to WebSocket subscriptions: one encode per change, a bounded outbox per client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode
RESET = "\x00reset"  # outbox marker: the frames before it were dropped; send fresh snapshots
DATA_FRAMES = ('{"type":"change"', '{"type":"snapshot"')  # what an overflowing outbox may drop


@dataclass(frozen=True)
class Change:
    cursor: int
    query: str
    args: str
    key: str
    op: str
    row: Any


def change_body(change: Change) -> str:
    """Everything of a change frame after its subscription id, encoded once for all subscribers."""
    body: dict[str, Any] = {"cursor": change.cursor, "op": change.op, "key": change.key}
    if change.op == "upsert":
        body["row"] = change.row
    return _encode(body).decode()[1:]  # without the opening brace: frames are prefix + body


def apply_changes(rows: dict[str, Any], changes: list[Change]) -> None:
    """Bring snapshot rows (by key) forward by the given changes, in order."""
    for change in changes:
        if change.op == "remove":
            rows.pop(change.key, None)
        else:
            rows[change.key] = change.row


class Outbox:
    """A client's bounded queue of frames. When it overflows the client is not cut off: its pending
    frames are dropped and `lagging` is set, and once the queue has drained the session sends it
    fresh snapshots (`reset: true`) of everything it follows. `on_ready` is called whenever a frame
    is queued, so the session can run a sender only while there is something to send (an idle
    connection then holds no task: less memory per connection)."""

    __slots__ = ("frames", "lagging", "limit", "on_ready", "sent_cursor", "write_now")

    def __init__(self, limit: int = 1000) -> None:
        # a list, not a deque: an empty deque is ~600 B, an empty list 56 (one outbox per idle
        # connection, mostly empty: frames go straight to the socket); `_next_frame`'s pop(0) moves
        # at most `limit` pointers, and only for a client that fell behind
        self.frames: list[str] = []
        self.limit = limit
        self.lagging = False
        self.sent_cursor = 0  # the highest cursor of any snapshot or change frame queued
        self.on_ready: Callable[[], None] | None = None
        # set by the session while nothing is being sent and it is open: writes a frame to the
        # socket at once (True) or declines (False: the frame is queued as any other). It is the
        # dispatch loop's fast path per recipient, so the session keeps it None rather than have
        # it check the session's state for every frame.
        self.write_now: Callable[[str], bool] | None = None

    def put(self, frame: str, cursor: int | None = None) -> None:
        if cursor is not None:
            self.sent_cursor = max(self.sent_cursor, cursor)
        self.frames.append(frame)
        if self.on_ready is not None:
            self.on_ready()

    def deliver(self, frame: str, cursor: int) -> None:
        if self.lagging:
            return
        write_now = self.write_now
        if write_now is not None and not self.frames:
            try:
                written = write_now(frame)
            except Exception:  # the peer went away: the queued path meets it, and the receive loop too
                log.debug("send failed", exc_info=True)
                written = False
            if written:
                self.sent_cursor = max(self.sent_cursor, cursor)
                return
        if len(self.frames) >= self.limit:
            self.lagging = True
            # control frames (pong, error, auth_expired) survive; data frames are replaced by RESET
            kept = [queued for queued in self.frames if not queued.startswith(DATA_FRAMES)]
            self.frames.clear()
            self.frames.extend(kept)
            self.put(RESET)
            return
        self.put(frame, cursor)


@dataclass(eq=False, slots=True)
class Subscription:
    """One client subscription; `pending` ones buffer changes until their snapshot is sent."""

    id: str | int
    query: str
    args: str
    outbox: Outbox
    prefix: str = ""
    pending: bool = True
    buffer: list[Change] = field(default_factory=list)

    def __post_init__(self) -> None:
        # interned: subscriptions with the same id share the object, which dispatch compares by identity
        self.prefix = sys.intern('{"type":"change","id":' + _encode(self.id).decode() + ",")


class Hub:
    """Every change of this process's feed follower goes through here, in cursor order."""

    def __init__(self) -> None:
        self.groups: dict[tuple[str, str], set[Subscription]] = {}
        self.dispatched = 0
        self._advanced = asyncio.Event()

    def add(self, subscription: Subscription) -> None:
        self.groups.setdefault((subscription.query, subscription.args), set()).add(subscription)

    def discard(self, subscription: Subscription) -> None:
        group = self.groups.get((subscription.query, subscription.args))
        if group is not None:
            group.discard(subscription)
            if not group:
                del self.groups[(subscription.query, subscription.args)]

    def follows(self, query: str, args: str) -> bool:
        """Whether any subscription of this process follows this query and these arguments."""
        return (query, args) in self.groups

    def dispatch(self, change: Change) -> None:
        """Hand a change to every subscription of its query and arguments. This loop runs once per
        recipient, thousands of times per change: it stays flat (a pending subscription buffers the
        change until its snapshot is out; the others get their change frame, the subscription's
        `prefix` + the change's body, encoded once)."""
        group = self.groups.get((change.query, change.args))
        if group:
            body, cursor = change_body(change), change.cursor
            # one string per subscription id: subscribers sharing an id (clients often use the same
            # small ids) get the same object, whose wire bytes are then serialized once
            frames: dict[str, str] = {}
            prefix, frame = None, ""
            for subscription in group:
                if subscription.prefix is not prefix:
                    prefix = subscription.prefix
                    frame = frames.get(prefix) or frames.setdefault(prefix, prefix + body)
                if subscription.pending:
                    subscription.buffer.append(change)
                else:
                    subscription.outbox.deliver(frame, cursor)
        self.advance(change.cursor)

    def advance(self, cursor: int) -> None:
        if cursor > self.dispatched:
            self.dispatched = cursor
            self._advanced.set()

    async def reached(self, cursor: int, timeout: float) -> bool:
        """Wait until every change up to `cursor` has been dispatched here."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.dispatched < cursor:
            self._advanced.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), remaining)
        return True
