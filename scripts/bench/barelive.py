"""The sustained baseline: the least a Python service can do for commit -> socket, on the same stack.

    server = start_bare_live(database_url=..., schema=..., host=..., port=..., workdir=...)  # a bench Server
    ranks, times = read_bare_log(database_url, schema)

One process, uvicorn as `lineup serve` runs it (uvloop, httptools, websockets-sansio, no compression),
a raw ASGI app, no framework, no event store, no projections, no authentication (a `Bearer` token is
only the user's key). It speaks just enough of Lineup's paths and frames for scripts/bench/live.py's
sustained phase to drive it and its clients to follow it unchanged:

- `POST /events/{id}/queue` opens a queue; `POST .../queue/join` and `.../queue/leave` are each ONE
  autocommit statement (data-modifying CTEs: the entry row, the queue's counter, a change row and
  `pg_notify` carrying the change), so the commit is durable before the answer (join: 201 with
  `entry_id` and `position`; leave: 200 with `entry_id`). Commands of one queue serialize on its row.
- `GET .../queue/summary` reads the counter; `GET /health` answers 200.
- `/ws`: `auth` is ignored, `subscribe` to `queue.summary {event_id}` answers a snapshot frame; one
  LISTEN connection gets every notification (the change is in its payload: no read back) and sends the
  change frame, encoded once, to that queue's sockets.

Every change row keeps `at_ms`, the clock before the statement was sent (as Lineup's event `at` is taken
before its batch's commit), so the benchmark bounds commit -> socket from both sides the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import secrets
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg_pool import AsyncConnectionPool

if TYPE_CHECKING:
    from pathlib import Path

    from server import Server

CHANNEL = "bare_live"
POOL_SIZE = 8  # connections the commands commit on (a command holds one for one statement)

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS "{schema}";
CREATE TABLE IF NOT EXISTS "{schema}".bare_queue (event_id text PRIMARY KEY, waiting int NOT NULL);
CREATE TABLE IF NOT EXISTS "{schema}".bare_entry (
    event_id text NOT NULL, user_key text NOT NULL, entry_id text NOT NULL, PRIMARY KEY (event_id, user_key));
CREATE TABLE IF NOT EXISTS "{schema}".bare_change (
    id bigserial PRIMARY KEY, event_id text NOT NULL, kind text NOT NULL, entry_id text NOT NULL,
    waiting int NOT NULL, at_ms bigint NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now());
"""

JOIN_SQL = """
WITH q AS (UPDATE "{schema}".bare_queue SET waiting = waiting + 1 WHERE event_id = %(e)s RETURNING waiting),
e AS (INSERT INTO "{schema}".bare_entry SELECT %(e)s, %(u)s, %(id)s FROM q),
c AS (INSERT INTO "{schema}".bare_change (event_id, kind, entry_id, waiting, at_ms)
      SELECT %(e)s, 'join', %(id)s, waiting, %(at)s FROM q RETURNING id, waiting)
SELECT waiting, pg_notify('{channel}', json_build_array(%(e)s, id, waiting)::text) FROM c
"""

LEAVE_SQL = """
WITH d AS (DELETE FROM "{schema}".bare_entry WHERE event_id = %(e)s AND user_key = %(u)s RETURNING entry_id),
q AS (UPDATE "{schema}".bare_queue SET waiting = waiting - 1
      WHERE event_id = %(e)s AND EXISTS (SELECT FROM d) RETURNING waiting),
c AS (INSERT INTO "{schema}".bare_change (event_id, kind, entry_id, waiting, at_ms)
      SELECT %(e)s, 'leave', d.entry_id, q.waiting, %(at)s FROM d, q RETURNING id, entry_id, waiting)
SELECT entry_id, pg_notify('{channel}', json_build_array(%(e)s, id, waiting)::text) FROM c
"""


class BareLive:
    """The ASGI app: commands on a pool, one LISTEN connection, sockets by queue."""

    def __init__(self, url: str, schema: str) -> None:
        self.url, self.schema = url, schema
        self.pool = AsyncConnectionPool(
            url, min_size=POOL_SIZE, max_size=POOL_SIZE, open=False, kwargs={"autocommit": True}
        )
        self.sockets: dict[str, set[Any]] = collections.defaultdict(set)  # event_id -> ASGI send callables
        self.listener: asyncio.Task[None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            status, answer = await self.http(scope)
            body = json.dumps(answer, separators=(",", ":")).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif scope["type"] == "websocket":
            await self.websocket(receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(SCHEMA_SQL.format(schema=self.schema))
                await self.pool.open(wait=True)
                ready = asyncio.Event()
                self.listener = asyncio.create_task(self.listen(ready))
                await ready.wait()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.listener is not None:
                    self.listener.cancel()
                await self.pool.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: dict[str, Any]) -> tuple[int, Any]:
        method, parts = scope["method"], scope["path"].strip("/").split("/")
        if method == "GET" and parts == ["health"]:
            return 200, {"status": "ok"}
        if len(parts) < 3 or parts[0] != "events" or parts[2] != "queue":
            return 404, {"error": "not_found"}
        event_id, action = parts[1], parts[3] if len(parts) > 3 else ""
        async with self.pool.connection() as conn:
            if method == "GET" and action == "summary":
                sql = f'SELECT waiting FROM "{self.schema}".bare_queue WHERE event_id = %s'
                row = await (await conn.execute(sql, (event_id,))).fetchone()
                return (200, {"event_id": event_id, "waiting": row[0]}) if row else (404, {"error": "not_found"})
            if method == "POST" and action in ("", "join", "leave"):
                user = dict(scope["headers"]).get(b"authorization", b"").decode()
                return await self.command(conn, action, event_id, user)
        return 404, {"error": "not_found"}

    async def command(self, conn: Any, action: str, event_id: str, user: str) -> tuple[int, Any]:
        if action == "":
            sql = f'INSERT INTO "{self.schema}".bare_queue VALUES (%s, 0) ON CONFLICT DO NOTHING'
            await conn.execute(sql, (event_id,))
            return 201, {"event_id": event_id}
        values = {"e": event_id, "u": user, "id": secrets.token_hex(8), "at": time.time_ns() // 1_000_000}
        sql = (JOIN_SQL if action == "join" else LEAVE_SQL).format(schema=self.schema, channel=CHANNEL)
        row = await (await conn.execute(sql, values)).fetchone()
        if row is None:
            return 404, {"error": "not_found" if action == "join" else "not_waiting"}
        return (
            (201, {"entry_id": values["id"], "position": row[0]}) if action == "join" else (200, {"entry_id": row[0]})
        )

    async def websocket(self, receive: Any, send: Any) -> None:
        followed: list[str] = []
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.connect":
                    await send({"type": "websocket.accept"})
                elif message["type"] == "websocket.disconnect":
                    return
                elif message.get("text"):
                    frame = json.loads(message["text"])
                    if frame.get("type") == "subscribe":
                        event_id = frame["args"]["event_id"]
                        followed.append(event_id)
                        self.sockets[event_id].add(send)
                        snapshot = {"type": "snapshot", "id": frame["id"], "cursor": 0, "rows": []}
                        await send({"type": "websocket.send", "text": json.dumps(snapshot, separators=(",", ":"))})
        finally:
            for event_id in followed:
                self.sockets[event_id].discard(send)

    async def listen(self, ready: asyncio.Event) -> None:
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            ready.set()
            async for notify in conn.notifies():
                event_id, cursor, waiting = json.loads(notify.payload)
                row = {"event_id": event_id, "waiting": waiting}
                change = {"type": "change", "id": 1, "cursor": cursor, "op": "upsert", "row": row}
                message = {"type": "websocket.send", "text": json.dumps(change, separators=(",", ":"))}
                for send in list(self.sockets.get(event_id, ())):
                    with contextlib.suppress(Exception):  # a socket closing meanwhile
                        await send(message)


def start_bare_live(*, database_url: str, schema: str, host: str, port: int, workdir: Path) -> Server:
    from server import Server

    log_path = workdir / "bare-live.log"
    command = [sys.executable, __file__, database_url, schema, host, str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    server = Server(process, host, port, log_path)
    server.wait_healthy()
    return server


def read_bare_log(url: str, schema: str) -> tuple[dict[str, int], dict[tuple[str, str], int], dict[int, int]]:
    """As live.read_log: each leave's rank in its queue (commit order: a queue's commands serialize on
    its row, before their change row gets its id), each command's time before its statement, and
    when each change's statement began."""
    ranks: dict[str, int] = {}
    times: dict[tuple[str, str], int] = {}
    recorded: dict[int, int] = {}
    counts: collections.Counter[str] = collections.Counter()
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id, event_id, kind, entry_id, at_ms, (extract(epoch FROM recorded_at) * 1e9)::bigint"
            f' FROM "{schema}".bare_change ORDER BY id'
        )
        for cursor, event_id, kind, entry_id, at_ms, recorded_ns in rows:
            times[kind, entry_id] = at_ms
            recorded[cursor] = recorded_ns
            if kind == "leave":
                counts[event_id] += 1
                ranks[entry_id] = counts[event_id]
    return ranks, times, recorded


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("database_url", "schema", "host"):
        parser.add_argument(name)
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    app = BareLive(args.database_url, args.schema)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
