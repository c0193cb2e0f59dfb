"""The public HTTP contract, over real HTTP against a real `lineup serve` process."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest

from tests.e2e.conftest import LineupServer
from tests.e2e.support import assert_error, now_ms, uid

ENTRY_KEYS = {"entry_id", "event_id", "user_id", "position", "estimated_time", "status"}
SUMMARY_KEYS = {"event_id", "name", "status", "waiting", "avg_service_seconds"}


class Api:
    """A thin client: one method per contract call, acting as a named user."""

    def __init__(self, server: LineupServer, http: httpx.Client) -> None:
        self.server = server
        self.http = http

    def auth(self, user: str, role: str = "user") -> dict[str, str]:
        return self.server.headers(user, role=role)

    def open(self, event: str, owner: str, **body: Any) -> httpx.Response:
        return self.http.post(f"/events/{event}/queue", json={"name": "Signing", **body}, headers=self.auth(owner))

    def join(self, event: str, user: str) -> httpx.Response:
        return self.http.post(f"/events/{event}/queue/join", headers=self.auth(user))

    def leave(self, event: str, user: str) -> httpx.Response:
        return self.http.post(f"/events/{event}/queue/leave", headers=self.auth(user))

    def owner_action(self, event: str, user: str, action: str, role: str = "user") -> httpx.Response:
        return self.http.post(f"/events/{event}/queue/{action}", headers=self.auth(user, role))

    def entries(self, event: str, user: str, role: str = "user") -> httpx.Response:
        return self.http.get(f"/events/{event}/queue", headers=self.auth(user, role))

    def summary(self, event: str, user: str) -> httpx.Response:
        return self.http.get(f"/events/{event}/queue/summary", headers=self.auth(user))

    def user_queue(self, user: str, caller: str | None = None, role: str = "user") -> httpx.Response:
        return self.http.get(f"/users/{user}/queue", headers=self.auth(caller or user, role))


@pytest.fixture
def api(server: LineupServer, client: httpx.Client) -> Api:
    return Api(server, client)


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def assert_entry(body: dict[str, Any], *, event: str, user: str, status: str, position: int | None) -> None:
    assert set(body) >= ENTRY_KEYS, body
    assert body["event_id"] == event
    assert body["user_id"] == user
    assert body["status"] == status
    assert body["position"] == position
    if position is None:
        assert body["estimated_time"] is None
    else:
        assert isinstance(body["estimated_time"], int)


# (1) The contract's walk-through ----------------------------------------------------------------


SERVICE_MS = 60_000


def _open_and_join(api: Api, event: str, owner: str, users: tuple[str, str, str]) -> list[str]:
    """Open (201 summary), three joins (201, positions 1..3), a repeated join (200, same entry)."""
    summary = ok(api.open(event, owner, service_seconds=SERVICE_MS // 1000), 201)
    assert set(summary) >= SUMMARY_KEYS
    assert summary["event_id"] == event
    assert summary["name"] == "Signing"
    assert summary["status"] == "open"
    assert summary["waiting"] == 0
    assert summary["avg_service_seconds"] == SERVICE_MS / 1000

    before = now_ms()
    ids = []
    for position, user in enumerate(users, start=1):
        entry = ok(api.join(event, user), 201)
        assert_entry(entry, event=event, user=user, status="waiting", position=position)
        # the time of the queue's latest event (>= before) + position x average service time
        assert entry["estimated_time"] >= before + position * SERVICE_MS
        assert entry["estimated_time"] <= now_ms() + position * SERVICE_MS
        ids.append(entry["entry_id"])
    assert len(set(ids)) == 3

    again = ok(api.join(event, users[0]), 200)
    assert again["entry_id"] == ids[0]
    assert again["position"] == 1
    assert again["status"] == "waiting"

    listing = ok(api.entries(event, owner))
    assert [e["entry_id"] for e in listing] == ids  # no second entry for the repeated join
    assert [e["user_id"] for e in listing] == list(users)
    assert [e["position"] for e in listing] == [1, 2, 3]
    assert [e["status"] for e in listing] == ["waiting"] * 3
    times = [e["estimated_time"] for e in listing]
    assert times[1] - times[0] == SERVICE_MS  # one read: the same latest event time for every entry
    assert times[2] - times[1] == SERVICE_MS
    assert times[0] >= before + SERVICE_MS

    assert ok(api.summary(event, uid("anyone")))["waiting"] == 3
    mine = ok(api.user_queue(users[1]))
    assert [e["entry_id"] for e in mine] == [ids[1]]
    assert_entry(mine[0], event=event, user=users[1], status="waiting", position=2)
    return ids


def _call_complete_leave_no_show(api: Api, event: str, owner: str, users: tuple[str, str, str], ids: list[str]) -> None:
    """call-next, positions move up, complete (twice), leave, no-show; the queue ends empty."""
    (u1, u2, u3), (e1, e2, e3) = users, ids
    called = ok(api.owner_action(event, owner, "call-next"))
    assert called["entry_id"] == e1
    assert_entry(called, event=event, user=u1, status="called", position=None)

    moved = ok(api.user_queue(u2))
    assert [(e["entry_id"], e["position"]) for e in moved] == [(e2, 1)]
    assert ok(api.user_queue(u3))[0]["position"] == 2
    assert [(e["entry_id"], e["status"], e["position"]) for e in ok(api.user_queue(u1))] == [(e1, "called", None)]
    listing = ok(api.entries(event, owner))
    assert [(e["entry_id"], e["status"], e["position"]) for e in listing] == [
        (e1, "called", None),
        (e2, "waiting", 1),
        (e3, "waiting", 2),
    ]

    assert_error(api.owner_action(event, owner, f"entries/{e2}/complete"), 409, "not_called")
    done = ok(api.owner_action(event, owner, f"entries/{e1}/complete"))
    assert (done["entry_id"], done["user_id"], done["status"]) == (e1, u1, "completed")
    # a completed entry is no longer active
    assert_error(api.owner_action(event, owner, f"entries/{e1}/complete"), 404, "not_found")
    assert ok(api.user_queue(u1)) == []

    left = ok(api.leave(event, u3))
    assert (left["entry_id"], left["status"], left["reason"]) == (e3, "cancelled", "left")
    assert_error(api.leave(event, u3), 404, "not_found")

    gone = ok(api.owner_action(event, owner, f"entries/{e2}/no-show"))
    assert (gone["entry_id"], gone["user_id"], gone["status"], gone["reason"]) == (e2, u2, "cancelled", "no_show")

    assert ok(api.entries(event, owner)) == []
    assert ok(api.summary(event, owner))["waiting"] == 0
    assert_error(api.owner_action(event, owner, "call-next"), 409, "queue_empty")


def _pause_resume_close(api: Api, event: str, owner: str) -> None:
    """pause refuses joins, resume admits again, close cancels the waiting and refuses joins."""
    u4, u5, u6 = uid("u4"), uid("u5"), uid("u6")
    assert ok(api.owner_action(event, owner, "pause"))["status"] == "paused"
    assert ok(api.summary(event, u4))["status"] == "paused"
    assert_error(api.join(event, u4), 409, "queue_paused")
    assert ok(api.owner_action(event, owner, "resume"))["status"] == "open"

    e4 = ok(api.join(event, u4), 201)
    assert e4["position"] == 1
    e5 = ok(api.join(event, u5), 201)
    assert e5["position"] == 2
    assert ok(api.owner_action(event, owner, "call-next"))["entry_id"] == e4["entry_id"]

    closed = ok(api.owner_action(event, owner, "close"))
    assert (closed["status"], closed["waiting"]) == ("closed", 0)
    listing = ok(api.entries(event, owner))
    assert [(e["entry_id"], e["status"]) for e in listing] == [(e4["entry_id"], "called")]  # waiting ones gone
    assert ok(api.user_queue(u5)) == []
    assert_error(api.join(event, u6), 409, "queue_closed")
    final = ok(api.summary(event, u6))
    assert (final["status"], final["waiting"]) == ("closed", 0)


def test_queue_walk_through(api: Api) -> None:
    event, owner = uid("ev"), uid("owner")
    users = (uid("u1"), uid("u2"), uid("u3"))
    ids = _open_and_join(api, event, owner, users)
    _call_complete_leave_no_show(api, event, owner, users, ids)
    _pause_resume_close(api, event, owner)


def test_service_role_may_run_an_owners_queue(api: Api) -> None:
    event, owner, user, service = uid("ev"), uid("owner"), uid("u"), uid("svc")
    ok(api.open(event, owner), 201)
    entry = ok(api.join(event, user), 201)
    listing = ok(api.entries(event, service, role="service"))
    assert [e["entry_id"] for e in listing] == [entry["entry_id"]]
    called = ok(api.owner_action(event, service, "call-next", role="service"))
    assert called["entry_id"] == entry["entry_id"]
    assert called["status"] == "called"


# (2) Every error code ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"name":', id="malformed-json"),
        pytest.param(b"not json at all", id="not-json"),
        pytest.param(b"[1, 2]", id="array-not-object"),
        pytest.param(b'{"name": "q", "capacity": "x"}', id="capacity-string"),
        pytest.param(b'{"name": 12}', id="name-number"),
        pytest.param(b'{"name": "q", "requires_payment": "yes"}', id="requires-payment-string"),
        pytest.param(b'{"name": "q", "service_seconds": 1.5}', id="service-seconds-float"),
        pytest.param(b'{"name": "q", "colour": "red"}', id="unknown-field"),
        pytest.param(b'{"capacity": 3}', id="missing-name"),
    ],
)
def test_bad_request(api: Api, body: bytes) -> None:
    event, owner = uid("ev"), uid("owner")
    response = api.http.post(
        f"/events/{event}/queue", content=body, headers={**api.auth(owner), "Content-Type": "application/json"}
    )
    assert_error(response, 400, "bad_request")
    # nothing was opened
    assert_error(api.summary(event, owner), 404, "not_found")


def test_unauthenticated_without_token(api: Api) -> None:
    event, owner = uid("ev"), uid("owner")
    assert_error(api.http.post(f"/events/{event}/queue", json={"name": "q"}), 401, "unauthenticated")
    assert_error(api.http.get(f"/users/{owner}/queue"), 401, "unauthenticated")
    assert_error(api.http.get(f"/events/{event}/queue/summary"), 401, "unauthenticated")
    assert_error(api.summary(event, owner), 404, "not_found")  # the refused open changed nothing


def _forged(secret: str, user: str, *, expires_in: int = 120, **extra: Any) -> str:
    """A well-formed token (sub, iat, exp) so that each bad case below fails for one reason only."""
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now - 300, "exp": now + expires_in, **extra}, secret, algorithm="HS256")


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(lambda secret, user: "garbage", id="garbage"),
        pytest.param(lambda secret, user: "a.b.c", id="three-garbage-parts"),
        pytest.param(lambda secret, user: _forged(secret, user, expires_in=-120), id="expired"),
        pytest.param(lambda secret, user: _forged("some-other-secret-that-is-long-enough", user), id="wrong-secret"),
        pytest.param(lambda secret, user: _forged(secret, user, role="admin"), id="unknown-role"),
    ],
)
def test_unauthenticated_bad_tokens(api: Api, make_token: Any) -> None:
    event, user = uid("ev"), uid("u")
    token = make_token(api.server.secret, user)
    headers = {"Authorization": f"Bearer {token}"}
    assert_error(api.http.post(f"/events/{event}/queue", json={"name": "q"}, headers=headers), 401, "unauthenticated")
    assert_error(api.http.get(f"/users/{user}/queue", headers=headers), 401, "unauthenticated")
    assert_error(api.summary(event, user), 404, "not_found")  # the refused open changed nothing


def test_a_forged_token_with_the_right_secret_is_accepted(api: Api) -> None:
    """Control for the bad-token cases: the same construction with the right secret works."""
    user = uid("u")
    token = _forged(api.server.secret, user)
    response = api.http.get(f"/users/{user}/queue", headers={"Authorization": f"Bearer {token}"})
    assert ok(response) == []


def test_a_token_already_accepted_is_refused_once_it_expires_and_its_altered_copies_never_pass(api: Api) -> None:
    """The server remembers verified tokens (entrypoints/auth.LineupToken): that must not outlive
    `exp`, nor let a token whose signature was changed ride on the one that verified."""
    user = uid("u")
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 2}, api.server.secret, algorithm="HS256")
    header, payload, signature = token.split(".")
    altered = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    assert ok(api.http.get(f"/users/{user}/queue", headers={"Authorization": f"Bearer {token}"})) == []
    response = api.http.get(f"/users/{user}/queue", headers={"Authorization": f"Bearer {altered}"})
    assert_error(response, 401, "unauthenticated")
    while time.time() < jwt.decode(token, options={"verify_signature": False})["exp"] + 0.1:
        time.sleep(0.1)  # wait for the token's expiry (not a measurement)
    response = api.http.get(f"/users/{user}/queue", headers={"Authorization": f"Bearer {token}"})
    assert_error(response, 401, "unauthenticated")


def test_a_token_with_only_sub_and_exp_is_accepted(api: Api) -> None:
    """The contract names `sub`, optional `role` and `exp`; `iat` is optional in a JWT (RFC 7519)."""
    user = uid("u")
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 120}, api.server.secret, algorithm="HS256")
    response = api.http.get(f"/users/{user}/queue", headers={"Authorization": f"Bearer {token}"})
    assert ok(response) == []


def test_forbidden(api: Api) -> None:
    event, owner, user, other = uid("ev"), uid("owner"), uid("u"), uid("other")
    ok(api.open(event, owner), 201)
    entry = ok(api.join(event, user), 201)
    entry_id = entry["entry_id"]

    for action in ("call-next", "pause", "resume", "close", f"entries/{entry_id}/complete"):
        assert_error(api.owner_action(event, other, action), 403, "forbidden")
    assert_error(api.owner_action(event, user, f"entries/{entry_id}/no-show"), 403, "forbidden")
    assert_error(api.entries(event, other), 403, "forbidden")
    assert_error(api.user_queue(user, caller=other), 403, "forbidden")

    # nothing changed: the entry is still waiting at position 1 and the queue is open
    mine = ok(api.user_queue(user))
    assert [(e["entry_id"], e["status"], e["position"]) for e in mine] == [(entry_id, "waiting", 1)]
    assert ok(api.summary(event, other))["status"] == "open"

    # a trusted backend may read any user's entries
    seen = ok(api.user_queue(user, caller=uid("svc"), role="service"))
    assert [e["entry_id"] for e in seen] == [entry_id]


def test_not_found(api: Api) -> None:
    event, user = uid("ev"), uid("u")
    assert_error(api.summary(event, user), 404, "not_found")
    assert_error(api.entries(event, user), 404, "not_found")
    assert_error(api.join(event, user), 404, "not_found")
    assert_error(api.leave(event, user), 404, "not_found")
    assert_error(api.owner_action(event, user, "call-next"), 404, "not_found")
    assert_error(api.owner_action(event, user, "close"), 404, "not_found")
    assert_error(api.http.get("/no/such/route", headers=api.auth(user)), 404, "not_found")
    assert_error(api.http.post(f"/events/{event}/queue/teleport", headers=api.auth(user)), 404, "not_found")

    # an entry id that does not exist in an existing queue
    ok(api.open(event, user), 201)
    missing = str(uuid.uuid4())
    assert_error(api.owner_action(event, user, f"entries/{missing}/complete"), 404, "not_found")
    assert_error(api.owner_action(event, user, f"entries/{missing}/no-show"), 404, "not_found")


def test_conflicts(api: Api) -> None:
    owner, u1, u2 = uid("owner"), uid("u1"), uid("u2")

    event = uid("ev")
    ok(api.open(event, owner), 201)
    assert_error(api.open(event, owner), 409, "already_open")
    assert_error(api.open(event, uid("someone-else")), 409, "already_open")
    assert ok(api.summary(event, owner))["owner_id"] == owner  # the first opener stays owner

    full = uid("ev")
    ok(api.open(full, owner, capacity=1), 201)
    ok(api.join(full, u1), 201)
    assert_error(api.join(full, u2), 409, "queue_full")
    assert ok(api.join(full, u1), 200)["position"] == 1  # an active entry is not refused

    empty = uid("ev")
    ok(api.open(empty, owner), 201)
    assert_error(api.owner_action(empty, owner, "call-next"), 409, "queue_empty")

    waiting = ok(api.join(empty, u1), 201)
    assert_error(api.owner_action(empty, owner, f"entries/{waiting['entry_id']}/complete"), 409, "not_called")

    paid = uid("ev")
    opened = ok(api.open(paid, owner, requires_payment=True), 201)
    assert opened["status"] == "open"
    assert_error(api.join(paid, u2), 409, "payment_required")
    assert ok(api.user_queue(u2)) == []
    assert ok(api.summary(paid, u2))["waiting"] == 0

    closed = uid("ev")
    ok(api.open(closed, owner), 201)
    ok(api.owner_action(closed, owner, "close"))
    assert_error(api.join(closed, u2), 409, "queue_closed")
    assert_error(api.owner_action(closed, owner, "close"), 409, "queue_closed")


def test_too_large(api: Api) -> None:
    event, owner = uid("ev"), uid("owner")
    response = api.open(event, owner, name="x" * 70_000)
    assert_error(response, 413, "too_large")
    assert_error(api.summary(event, owner), 404, "not_found")


def test_too_large_without_content_length(api: Api) -> None:
    """A chunked body (no Content-Length) over 64 KiB is refused too."""
    event, owner = uid("ev"), uid("owner")
    payload = json.dumps({"name": "x" * 70_000}).encode()
    chunks = (payload[i : i + 8192] for i in range(0, len(payload), 8192))
    response = api.http.post(
        f"/events/{event}/queue", content=chunks, headers={**api.auth(owner), "Content-Type": "application/json"}
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_error(response, 413, "too_large")
    assert_error(api.summary(event, owner), 404, "not_found")


def test_a_body_just_under_the_limit_is_not_too_large(api: Api) -> None:
    """Control for 413: 60 KiB passes the size check (and is then refused by validation: name > 200)."""
    event, owner = uid("ev"), uid("owner")
    assert_error(api.open(event, owner, name="x" * 60_000), 400, "bad_request")


# (3) Restart keeps all state ---------------------------------------------------------------------


def test_restart_keeps_state(server: LineupServer, api: Api) -> None:
    event, owner = uid("ev"), uid("owner")
    users = [uid("u") for _ in range(3)]
    ok(api.open(event, owner, service_seconds=90), 201)
    entries = [ok(api.join(event, user), 201) for user in users]
    ok(api.owner_action(event, owner, "call-next"))
    before = ok(api.entries(event, owner))
    assert [(e["entry_id"], e["status"], e["position"]) for e in before] == [
        (entries[0]["entry_id"], "called", None),
        (entries[1]["entry_id"], "waiting", 1),
        (entries[2]["entry_id"], "waiting", 2),
    ]
    pid = server.process.pid if server.process else None

    server.restart()
    assert server.process is not None
    assert server.process.pid != pid

    with server.client() as fresh:
        again = Api(server, fresh)
        assert ok(again.entries(event, owner)) == before  # same entries, same times: no new event
        summary = ok(again.summary(event, owner))
        assert summary["status"] == "open"
        assert summary["waiting"] == 2
        assert summary["avg_service_seconds"] == 90
        assert ok(again.join(event, users[1]), 200)["entry_id"] == entries[1]["entry_id"]
        newcomer = ok(again.join(event, uid("late")), 201)
        assert newcomer["position"] == 3
        assert ok(again.owner_action(event, owner, f"entries/{entries[0]['entry_id']}/complete"))["status"] == (
            "completed"
        )
        assert_error(again.open(event, owner), 409, "already_open")


# (4) Operational endpoints -----------------------------------------------------------------------


def test_health(client: httpx.Client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready(api: Api, client: httpx.Client) -> None:
    ok(api.open(uid("ev"), uid("owner")), 201)  # at least one event in the log
    body = ok(client.get("/ready"))
    assert body["status"] == "ready"
    assert body["head"] >= 1


def test_metrics(api: Api, client: httpx.Client) -> None:
    ok(api.open(uid("ev"), uid("owner")), 201)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    values = {
        line.split(" ")[0]: line.split(" ")[1]
        for line in response.text.splitlines()
        if line and not line.startswith("#")
    }
    assert "lineup_log_head" in values
    assert int(values["lineup_log_head"]) >= 1


def test_schema_is_public(client: httpx.Client) -> None:
    page = client.get("/schema")
    assert page.status_code == 200
    assert "Lineup" in page.text
    spec = client.get("/schema/openapi.json")
    assert spec.status_code == 200
    document = spec.json()
    assert document["info"]["title"] == "Lineup"
    assert "/events/{event_id}/queue/join" in document["paths"]
    assert client.get("/schema/swagger").status_code == 200


def test_method_not_allowed_is_a_json_error(api: Api) -> None:
    response = api.http.delete(f"/events/{uid('ev')}/queue", headers=api.auth(uid("u")))
    assert response.status_code == 405
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert "Traceback" not in response.text
