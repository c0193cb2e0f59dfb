"""Identity: JWT HS256 tokens whose `sub` is the user and optional `role` is `user` or `service`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.security.jwt import JWTAuth, Token
from litestar.security.jwt.token import JWTDecodeOptions

from domain.commands import Caller

ROLES = ("user", "service")
PUBLIC_PATHS = ["^/health", "^/ready", "^/metrics", "^/schema", "^/api/webhooks", "^/ws"]  # /ws: auth in-band


NO_EXPIRY = timedelta(days=3650)


class LineupToken(Token):
    """Litestar's Token, but `iat` is optional and `exp` is honoured when present (the contract)."""

    @classmethod
    def decode_payload(  # noqa: PLR0913
        cls,
        encoded_token: str,
        secret: str,
        algorithms: list[str],
        issuer: str | Sequence[str] | None = None,
        audience: str | Sequence[str] | None = None,
        options: JWTDecodeOptions | None = None,
    ) -> Any:
        payload = super().decode_payload(encoded_token, secret, algorithms, issuer, audience, options)
        if isinstance(payload, dict):
            now = datetime.now(UTC).timestamp()
            iat = payload.get("iat")
            if not isinstance(iat, int | float) or iat > now:  # absent, or an issuer's clock running ahead
                payload["iat"] = int(now)
            payload.setdefault("exp", int(now + NO_EXPIRY.total_seconds()))
        return payload


def caller_from(token: Token) -> Caller:
    role = token.extras.get("role", "user")
    if role not in ROLES:
        msg = f"unknown role {role!r}: expected 'user' or 'service'"
        raise NotAuthorizedException(msg)
    return Caller(token.sub, is_service=role == "service")


def decode(encoded: str, secret: str) -> tuple[Caller, float]:
    """Verify a token (signature, expiry): who it names and when it expires (epoch seconds).

    Raises NotAuthorizedException."""
    token = LineupToken.decode(encoded, secret, "HS256")
    return caller_from(token), token.exp.timestamp()


def issue(secret: str, user_id: str, *, role: str = "user", ttl: int = 3600) -> str:
    """A signed token for development and tests (`lineup token`)."""
    if role not in ROLES:
        msg = f"role must be one of {', '.join(ROLES)}"
        raise ValueError(msg)
    now = datetime.now(UTC)
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + timedelta(seconds=ttl)}
    if role != "user":
        claims["role"] = role
    return jwt.encode(claims, secret, algorithm="HS256")


def require_self(caller: Caller, user_id: str) -> None:
    """A path user id that is not the caller's own is 403, unless the caller is a service."""
    if not caller.is_service and caller.user_id != user_id:
        msg = "you may only read your own data"
        raise PermissionDeniedException(msg)


async def _retrieve_caller(token: Token, _: ASGIConnection[Any, Any, Any, Any]) -> Caller:
    return caller_from(token)


def jwt_auth(secret: str) -> JWTAuth[Caller, Token]:
    return JWTAuth[Caller, Token](
        retrieve_user_handler=_retrieve_caller,
        token_secret=secret,
        algorithm="HS256",
        exclude=PUBLIC_PATHS,
        token_cls=LineupToken,
    )
