"""Tokens verify with PyJWT's HS256 as installed by `jwt_auth`, which prepares each secret once."""

from __future__ import annotations

import string

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jwt.exceptions import InvalidKeyError
from litestar.exceptions import NotAuthorizedException

from entrypoints.auth import RememberedKeyHMAC, decode, issue, remember_hs256_keys

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
