"""Identity: JWT HS256 tokens whose `sub` is the user and optional `role` is `user` or `service`."""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Self

import jwt
import msgspec
from jwt.algorithms import HMACAlgorithm
from jwt.exceptions import InvalidKeyError
from litestar.connection import ASGIConnection
from litestar.exceptions import ImproperlyConfiguredException, NotAuthorizedException, PermissionDeniedException
from litestar.security.jwt import JWTAuth, Token
from litestar.security.jwt.token import JWTDecodeOptions

from domain.commands import Caller

ROLES = ("user", "service")
PUBLIC_PATHS = ["^/health", "^/ready", "^/metrics", "^/schema", "^/api/webhooks", "^/ws"]  # /ws: auth in-band


NO_EXPIRY = timedelta(days=3650)


VERIFIED_KEPT = 10_000  # verified tokens remembered per process (a few MB at most)
# Litestar's options as `JWTAuth` here passes them: only decodes with these are remembered
PLAIN_OPTIONS: dict[str, Any] = {
    "audience": None,
    "issuer": None,
    "require_claims": None,
    "verify_exp": True,
    "verify_nbf": True,
    "strict_audience": False,
}


# The plain path (`LineupToken.plain_hs256`) takes only these: the header segments PyJWT writes for
# HS256 and the other usual orders, three unpadded base64url segments, and these claims.
PLAIN_HEADERS = frozenset(
    base64.urlsafe_b64encode(msgspec.json.encode(header)).rstrip(b"=").decode()
    for header in ({"alg": "HS256", "typ": "JWT"}, {"typ": "JWT", "alg": "HS256"}, {"alg": "HS256"})
)
PLAIN_SEGMENTS = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
PLAIN_CLAIMS = frozenset({"sub", "exp", "iat", "nbf", "role"})
MIN_HMAC_KEY = 32  # bytes: PyJWT warns below this (RFC 7518 3.2); such keys take PyJWT's path and its warning


def _unbase64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _signed_claims(encoded: str, secret: str) -> dict[str, Any] | None:
    """The claims of a token with one of `PLAIN_HEADERS`, a valid HS256 signature by `secret` and
    only `PLAIN_CLAIMS`; None for any other."""
    segments = PLAIN_SEGMENTS.fullmatch(encoded)
    if segments is None or segments[1] not in PLAIN_HEADERS:
        return None
    try:
        key = jwt.get_algorithm_by_name("HS256").prepare_key(secret)
        signed = (
            isinstance(key, bytes)
            and len(key) >= MIN_HMAC_KEY
            and hmac.compare_digest(
                hmac.digest(key, encoded[: segments.end(2)].encode(), "sha256"), _unbase64url(segments[3])
            )
        )
        claims = msgspec.json.decode(_unbase64url(segments[2])) if signed else None
    except (binascii.Error, ValueError, InvalidKeyError, msgspec.DecodeError):
        return None
    return claims if type(claims) is dict and claims.keys() <= PLAIN_CLAIMS else None


KEYS_KEPT = 8  # prepared HMAC secrets remembered (the configured one, and a few for tests and tools)


class RememberedKeyHMAC(HMACAlgorithm):
    """PyJWT's HS256, preparing each secret once. PyJWT prepares the key on every decode (as bytes,
    checked not to be a PEM, SSH, DER or JWK key): 10 µs of a 47 µs decode, paid by every command
    with a token not seen before (a new user); 8 % of the HTTP process's GIL time at 1,000
    commands/s (py-spy). Only keys that prepared are kept: a refused one is refused every time."""

    def __init__(self) -> None:
        super().__init__(HMACAlgorithm.SHA256)
        self._prepared: dict[str | bytes, bytes] = {}

    def prepare_key(self, key: str | bytes) -> bytes:
        if not isinstance(key, str | bytes):
            return super().prepare_key(key)
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = super().prepare_key(key)
            if len(self._prepared) < KEYS_KEPT:
                self._prepared[key] = prepared
        return prepared


def remember_hs256_keys() -> None:
    """Install `RememberedKeyHMAC` as HS256 in PyJWT's registry (which `jwt.decode` and `jwt.encode`
    use, as Litestar does), once per process."""
    if not isinstance(jwt.get_algorithm_by_name("HS256"), RememberedKeyHMAC):
        jwt.unregister_algorithm("HS256")
        jwt.register_algorithm("HS256", RememberedKeyHMAC())


class LineupToken(Token):
    """Litestar's Token, but `iat` is optional and `exp` is honoured when present (the contract).

    A verified token is remembered, keyed by its exact text, the secret and the algorithm: the
    same bytes verify the same way, so a client sending its token with every request pays PyJWT's
    decode once, not per request (`/ws` does not remember: see `decode`); that decode was a fifth of the HTTP
    process's CPU at 1,000 commands/s (py-spy, `--gil`). `exp` is checked again on every use, `nbf`
    had passed when it was verified, and only tokens that verified are kept, at most
    `VERIFIED_KEPT` (the oldest go first)."""

    _verified: ClassVar[dict[tuple[str, str, str], LineupToken]] = {}

    @classmethod
    def decode(cls, encoded_token: str, secret: str, algorithm: str, **options: Any) -> Self:  # type: ignore[override]
        remember = options.pop("remember", True)
        if any(options.get(name, plain) != plain for name, plain in PLAIN_OPTIONS.items()):
            return super().decode(encoded_token, secret, algorithm, **options)
        key = (secret, algorithm, encoded_token)
        known = cls._verified.get(key) if remember else None
        if known is not None and time.time() < known.exp.timestamp():
            return known  # type: ignore[return-value]
        token = cls.plain_hs256(encoded_token, secret) if algorithm == "HS256" else None
        if token is None:
            token = super().decode(encoded_token, secret, algorithm, **options)
        if not remember:
            return token
        verified = cls._verified
        verified.pop(key, None)
        if len(verified) >= VERIFIED_KEPT:
            del verified[next(iter(verified))]
        verified[key] = token
        return token

    @classmethod
    def plain_hs256(cls, encoded: str, secret: str) -> Self | None:
        """The token PyJWT and Litestar would make of `encoded`, for the plain case only; None for
        anything else, which then takes their path (and gets their answer, refusals included).

        Plain: one of `PLAIN_HEADERS`, a valid HS256 signature by `secret`, and a JSON object of
        `PLAIN_CLAIMS` with a non-empty string `sub` and integer times (exp in the future, iat and
        nbf not). PyJWT's decode of a token not seen before took 41-62 µs, most of it Python (its
        per-character base64url check, JSON parsing, options and claim checks, Litestar's
        conversion): 18 % of the HTTP process's GIL time at 1,000 commands/s from as many users
        (py-spy, `--gil`). Here: one regular expression, C's HMAC and msgspec's JSON, 17-24 µs
        (scripts/bench/tokens.py, docs/benchmarks.md).
        tests/unit/test_auth.py checks, for generated tokens odd and plain, that this answers
        exactly as PyJWT's path does whenever it answers at all."""
        claims = _signed_claims(encoded, secret)
        if claims is None:
            return None
        now = time.time()
        sub, nbf = claims.get("sub"), claims.get("nbf", int(now))  # absent nbf: as if it had passed
        exp, iat = claims.get("exp", int(now + NO_EXPIRY.total_seconds())), claims.get("iat", int(now))
        if not (
            type(sub) is str and sub and type(exp) is type(iat) is type(nbf) is int and iat <= now and nbf <= now < exp
        ):
            return None
        extras: dict[str, Any] = {name: claims[name] for name in ("nbf", "role") if name in claims}
        try:
            return cls(
                exp=datetime.fromtimestamp(exp, tz=UTC), sub=sub, iat=datetime.fromtimestamp(iat, tz=UTC), extras=extras
            )
        except (OverflowError, OSError, ValueError, ImproperlyConfiguredException):
            return None

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
        if isinstance(payload, dict) and not isinstance(payload.get("extras", {}), dict):
            # Litestar gathers the claims it has no field for into `extras`, and raised TypeError
            # (a 500) on a validly signed token whose own `extras` claim is not an object.
            msg = "the token's extras claim is not an object"
            raise jwt.InvalidTokenError(msg)
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
    For `/ws`, whose connections send a token once (and again only to refresh it): it is not
    remembered, which would cost every idle connection the memory of its token.

    Raises NotAuthorizedException."""
    token = LineupToken.decode(encoded, secret, "HS256", remember=False)
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
    remember_hs256_keys()
    return JWTAuth[Caller, Token](
        retrieve_user_handler=_retrieve_caller,
        token_secret=secret,
        algorithm="HS256",
        exclude=PUBLIC_PATHS,
        token_cls=LineupToken,
    )
