"""Tokens verify with PyJWT's HS256 as installed by `jwt_auth`, which prepares each secret once."""

from __future__ import annotations

import base64
import hmac
import json
import string
import time
import warnings

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jwt.exceptions import InvalidKeyError
from litestar.exceptions import NotAuthorizedException

from entrypoints.auth import ROLES, LineupToken, RememberedKeyHMAC, caller_from, decode, issue, remember_hs256_keys

secrets = st.text(string.ascii_letters + string.digits, min_size=32, max_size=40)
PEM = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"


@given(signed_with=secrets, checked_with=secrets, user=st.text(string.ascii_lowercase, min_size=1, max_size=8))
def test_a_token_verifies_only_with_its_own_secret(signed_with: str, checked_with: str, user: str) -> None:
    remember_hs256_keys()
    assert isinstance(jwt.get_algorithm_by_name("HS256"), RememberedKeyHMAC)
    token = issue(signed_with, user)
    for _ in range(2):  # the second time with both secrets already prepared
        if signed_with == checked_with:
            assert decode(token, checked_with)[0].user_id == user
        else:
            with pytest.raises(NotAuthorizedException):
                decode(token, checked_with)


def test_installing_twice_keeps_one_algorithm_and_a_refused_key_stays_refused() -> None:
    remember_hs256_keys()
    installed = jwt.get_algorithm_by_name("HS256")
    remember_hs256_keys()
    assert jwt.get_algorithm_by_name("HS256") is installed
    for _ in range(2):
        with pytest.raises(InvalidKeyError):
            installed.prepare_key(PEM)


# -- the plain HS256 path answers as PyJWT's path does, whenever it answers --------------------------------

SECRET = "k" * 40


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token(header: dict[str, object], claims_json: str, key: str) -> str:
    signing = f"{_segment(json.dumps(header, separators=(',', ':')).encode())}.{_segment(claims_json.encode())}"
    return f"{signing}.{_segment(hmac.digest(key.encode(), signing.encode(), 'sha256'))}"


def _from_now(offset: int) -> int:
    return int(time.time()) + offset


# times at least 5 s from now (no test crosses a boundary), and values PyJWT or Litestar refuse or convert
future, past = st.integers(5, 10**6).map(_from_now), st.integers(-(10**6), -5).map(_from_now)
odd_values = st.one_of(
    future,
    past,
    st.one_of(future, past).map(lambda at: at + 0.5),
    st.one_of(future, past).map(str),
    st.sampled_from([True, None, 10**20, -(10**20), float("inf"), "soon", "", 7, {}, "admin", "lineup", "j"]),
)
# a plain token's claims, and at most one thing about the token made odd: near the plain path's edge
plain_claims = st.fixed_dictionaries(
    {"sub": st.text(min_size=1, max_size=6)},
    optional={"exp": future, "iat": past, "nbf": past, "role": st.sampled_from(["user", "service"])},
)
PLAIN = [{"alg": "HS256", "typ": "JWT"}, {"typ": "JWT", "alg": "HS256"}, {"alg": "HS256"}]
ODD_HEADERS = [
    {"alg": "HS256", "typ": "JWT", "kid": "k"},
    {"alg": "HS512", "typ": "JWT"},
    {"alg": "none", "typ": "JWT"},
    {"alg": "HS256", "crit": ["b64"], "b64": False},
    {"alg": "HS256", "typ": "JWT", "extra": 1},
]
CLAIM_NAMES = ["sub", "exp", "iat", "nbf", "role", "aud", "iss", "jti", "extras", "other"]
ODD_KEYS = ["other" * 8, "short"]
TAMPERING = ["signature", "payload", "padding", "plus", "dot", "spaces"]


def _tamper(token: str, how: str) -> str:
    header, payload, signature = token.split(".")
    if how == "signature":
        signature = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    elif how == "payload":
        payload = payload[:-1] + ("A" if payload[-1] != "A" else "B")
    elif how == "padding":
        signature += "=" * (-len(signature) % 4 or 4)
    elif how == "plus":
        signature = signature.replace("-", "+").replace("_", "/")
    elif how == "dot":
        return f"{token}."
    elif how == "spaces":
        return f" {token}"
    return f"{header}.{payload}.{signature}"


def _by_pyjwt(token: str, secret: str) -> LineupToken | None:
    """What Litestar's decode (PyJWT's path) makes of the token: the token, or None when refused."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns about the short key
        try:
            return super(LineupToken, LineupToken).decode(token, secret, "HS256")
        except NotAuthorizedException:
            return None
        except TypeError:  # Litestar's own failure on an "extras" claim that is not an object: refused too
            return None


def _same(plain: LineupToken, verified: LineupToken, claimed: dict[str, object]) -> None:
    assert (plain.sub, plain.extras) == (verified.sub, verified.extras)
    for name in ("exp", "iat"):  # an absent claim is filled in with the clock: a second may pass between
        mine, theirs = getattr(plain, name), getattr(verified, name)
        assert mine == theirs if name in claimed else abs((mine - theirs).total_seconds()) <= 1


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(claimed=plain_claims, odd=st.sampled_from(["", "header", "claim", "key", "tampered"]), data=st.data())
def test_the_plain_path_answers_as_pyjwt_does_whenever_it_answers(
    claimed: dict[str, object], odd: str, data: st.DataObject
) -> None:
    remember_hs256_keys()
    header, key, how = data.draw(st.sampled_from(PLAIN)), SECRET, ""
    if odd == "header":
        header = data.draw(st.sampled_from(ODD_HEADERS))
    elif odd == "claim":
        claimed = {**claimed, data.draw(st.sampled_from(CLAIM_NAMES)): data.draw(odd_values)}
    elif odd == "key":
        key = data.draw(st.sampled_from(ODD_KEYS))
    elif odd == "tampered":
        how = data.draw(st.sampled_from(TAMPERING))
    as_json = json.dumps(claimed) if data.draw(st.booleans()) else json.dumps(claimed, separators=(",", ":"))
    token = _tamper(_token(header, as_json, key), how)
    plain = LineupToken.plain_hs256(token, SECRET)
    verified = _by_pyjwt(token, SECRET)
    if plain is not None:
        assert verified is not None, f"the plain path took a token PyJWT refuses: {token}"
        _same(plain, verified, claimed)
    if not odd:
        assert plain is not None, "a plain token must take the plain path"


@given(user=st.text(string.ascii_letters + "-_.@", min_size=1, max_size=12), role=st.sampled_from(ROLES))
def test_tokens_as_issued_take_the_plain_path(user: str, role: str) -> None:
    remember_hs256_keys()
    token = issue(SECRET, user, role=role)
    plain = LineupToken.plain_hs256(token, SECRET)
    verified = _by_pyjwt(token, SECRET)
    assert plain is not None
    assert verified is not None
    _same(plain, verified, {"exp": 1, "iat": 1})
    assert caller_from(plain) == caller_from(verified)


def test_a_key_shorter_than_hs256_wants_takes_pyjwts_path_and_its_warning() -> None:
    remember_hs256_keys()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        token = issue("short", "ann")
    assert LineupToken.plain_hs256(token, "short") is None
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):
        assert decode(token, "short")[0].user_id == "ann"


def test_a_signed_token_whose_extras_claim_is_no_object_is_refused_not_a_crash() -> None:
    """Litestar gathers unknown claims into `extras`; an `extras` claim of another type made it raise
    TypeError (a 500) for a token signed with the right secret."""
    for extras in ("x", ["a"], 3):
        token = jwt.encode({"sub": "ann", "role": "user", "extras": extras}, SECRET, algorithm="HS256")
        with pytest.raises(NotAuthorizedException):
            decode(token, SECRET)
