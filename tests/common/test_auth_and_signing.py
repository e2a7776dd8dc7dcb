"""Service tokens, acting-user header, and signed URLs."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import example, given, settings
from hypothesis import strategies as st

from common.auth import ServiceAuth
from common.errors import ApiError
from common.signing import UrlSigner

TOKENS = ("current-token-0123456789", "previous-token-0123456789")


def request_with(headers: dict[str, str]) -> web.Request:
    return make_mocked_request("GET", "/api/images", headers=headers)


@pytest.mark.parametrize("token", TOKENS)
def test_every_listed_token_is_accepted(token: str) -> None:
    caller = ServiceAuth(TOKENS).caller(request_with({"Authorization": f"Bearer {token}", "X-User-Id": "alice"}))
    assert caller.user_id == "alice"


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer", "Bearer wrong-token-0123456789", "Basic Y3VycmVudC10b2tlbg==", f"Token {TOKENS[0]}"],
)
def test_missing_or_wrong_token_is_401(authorization: str) -> None:
    headers = {"X-User-Id": "alice"}
    if authorization:
        headers["Authorization"] = authorization
    with pytest.raises(ApiError) as caught:
        ServiceAuth(TOKENS).caller(request_with(headers))
    assert caught.value.status == 401
    assert caught.value.code == "unauthorized"
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("user_id", "message"),
    [
        (None, "the X-User-Id header is required"),
        ("   ", "the X-User-Id header is required"),
        ("a" * 129, "X-User-Id must be at most 128 characters"),
        ("bob\x00admin", "X-User-Id must not contain control characters"),
    ],
)
def test_bad_user_id_is_400(user_id: str | None, message: str) -> None:
    headers = {"Authorization": f"Bearer {TOKENS[0]}"}
    if user_id is not None:
        headers["X-User-Id"] = user_id
    with pytest.raises(ApiError) as caught:
        ServiceAuth(TOKENS).caller(request_with(headers))
    assert (caught.value.status, caught.value.code, caught.value.message) == (400, "bad_request", message)


KEY_A = b"a" * 32
KEY_B = b"b" * 32


def test_signature_round_trip_and_tampering() -> None:
    signer = UrlSigner((KEY_A,), ttl_seconds=60)
    expires, signature = signer.sign("image-1", now=1000)
    assert expires == 1060
    assert signer.verify("image-1", str(expires), signature, now=1000)
    assert not signer.verify("image-2", str(expires), signature, now=1000), "bound to the ID"
    assert not signer.verify("image-1", str(expires + 1), signature, now=1000), "bound to expiry"
    assert not signer.verify("image-1", str(expires), signature[:-1] + "A", now=1000)
    assert not signer.verify("image-1", str(expires), "", now=1000)
    assert not signer.verify("image-1", "-5", signature, now=1000)
    assert not signer.verify("image-1", "1e9", signature, now=1000)


def test_signature_expires() -> None:
    signer = UrlSigner((KEY_A,), ttl_seconds=60)
    expires, signature = signer.sign("image-1", now=1000)
    assert signer.verify("image-1", str(expires), signature, now=1060)
    assert not signer.verify("image-1", str(expires), signature, now=1061)


def test_key_rotation_keeps_old_urls_valid() -> None:
    old = UrlSigner((KEY_A,), ttl_seconds=60)
    expires, signature = old.sign("image-1", now=1000)
    rotated = UrlSigner((KEY_B, KEY_A), ttl_seconds=60)
    assert rotated.verify("image-1", str(expires), signature, now=1000)
    new_expires, new_signature = rotated.sign("image-1", now=1000)
    assert new_signature != signature
    assert not old.verify("image-1", str(new_expires), new_signature, now=1000)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(expires=st.text(max_size=20), signature=st.text(max_size=200))
@example(expires="\u00b2", signature="x")
@example(expires="\u0663", signature="x")
@example(expires="9999999999", signature="\u00e9" * 43)
@example(expires="9" * 5000, signature="x")
def test_hostile_signed_url_values_are_refused_never_raise(expires: str, signature: str) -> None:
    signer = UrlSigner((KEY_A,), ttl_seconds=60)
    assert signer.verify("image-1", expires, signature) is False


@pytest.mark.parametrize("token", ["t\u00e9st", "x" * 10_000])
def test_tokens_that_are_not_ours_are_401_whatever_their_bytes(token: str) -> None:
    with pytest.raises(ApiError) as caught:
        ServiceAuth(TOKENS).check_token(request_with({"Authorization": "Bearer " + token}))
    assert caught.value.status == 401


def test_a_token_of_non_utf8_bytes_is_invalid_not_a_crash() -> None:
    # aiohttp decodes header bytes that are not UTF-8 to lone surrogates ("\udcff" for 0xff).
    assert ServiceAuth(TOKENS).token_is_valid("\udcff\udcfe" + TOKENS[0]) is False
