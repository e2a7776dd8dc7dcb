"""Unauthenticated and hostile input never makes the image-store answer 5xx (issue 8 item 8).

Every query parameter and header the store parses is driven by hypothesis against a real server
socket: bad signatures are `404 not_found`, bad parameters `400 bad_request`, and every error is
JSON with a stable code.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.conftest import SERVICE_TOKEN, auth_headers
from tests.hostile_http import (
    Answer,
    assert_sane,
    encode,
    header_values,
    path_segments,
    query_values,
    range_headers,
    request,
    short_values,
    tag_lists,
)
from tests.image_store.conftest import photo

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)
AUTH = list(auth_headers().items())
NOT_FOUND = {"not_found"}


@pytest.fixture
async def live(settings_for: Callable[..., Any], store_app: Any, aiohttp_server: Any) -> dict[str, Any]:
    """A real server with one stored photograph (the answer of its upload)."""
    server: TestServer = await aiohttp_server(store_app(settings_for()))
    answer = await asyncio.to_thread(_upload, server.port)
    assert answer.status == 201, answer.body
    return {"port": server.port, "image": json.loads(answer.body)}


def _upload(port: int) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "POST", "/api/images", body=photo("coffee.png"), headers={**auth_headers(), "Content-Type": "image/png"}
        )
        response = connection.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())
    finally:
        connection.close()


def signed_parts(image: dict[str, Any]) -> tuple[str, str]:
    query = parse_qs(urlsplit(image["url"]).query)
    return query["exp"][0], query["sig"][0]


# ---- the reported inputs, one by one ---------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "exp=%C2%B2&sig=x",  # a superscript two: str.isdigit() says yes, int() says no
        "exp=9999999999&sig=%C3%A9t%C3%A9",  # a non-ASCII signature: compare_digest refuses str
        "exp=" + "9" * 5000 + "&sig=x",
        "exp=%D9%A3&sig=x",  # an Arabic-Indic three, which int() does accept
        "exp=&sig=",
        "exp=%FF%FE&sig=%FF",  # not UTF-8 at all
        "sig=" + "A" * 3000,
    ],
)
async def test_malformed_signatures_are_404(live: dict[str, Any], query: str) -> None:
    answer = await asyncio.to_thread(request, live["port"], "GET", f"/api/images/{live['image']['id']}?{query}")
    assert answer.status == 404, answer.body[:200]
    assert answer.error() == {"code": "not_found", "message": "image not found"}


@pytest.mark.parametrize(
    "limit", ["%C2%B2", "%E2%91%A0", "9" * 5000, "%D9%A3", "", "0", "101", "-1", "1.5", "+5", "%205", "%EF%BC%95"]
)
async def test_bad_limits_are_400(live: dict[str, Any], limit: str) -> None:
    answer = await asyncio.to_thread(request, live["port"], "GET", f"/api/images?limit={limit}", AUTH)
    assert answer.status == 400, answer.body[:200]
    error = answer.error()
    assert error["code"] == "bad_request"
    assert error["message"] == "limit must be a whole number from 1 to 100"


async def test_a_non_ascii_service_token_is_401(live: dict[str, Any]) -> None:
    headers = [("Authorization", "Bearer t\u00e9st".encode()), ("X-User-Id", b"alice")]
    answer = await asyncio.to_thread(request, live["port"], "GET", "/api/images", headers)
    assert answer.status == 401
    assert answer.error()["code"] == "unauthorized"


# ---- properties ------------------------------------------------------------------------------


async def test_signed_urls_with_any_exp_and_sig_are_404(live: dict[str, Any]) -> None:
    port, image_id = live["port"], live["image"]["id"]
    real_exp, real_sig = signed_parts(live["image"])

    @PROPERTY
    @given(
        exp=st.one_of(query_values, st.just(real_exp)),
        sig=query_values,
        extra=st.dictionaries(st.text(max_size=8), short_values, max_size=3),
    )
    @example(exp="²", sig="x", extra={})
    @example(exp=real_exp, sig="é" * 43, extra={})
    def check(exp: str | bytes, sig: str | bytes, extra: dict[str, Any]) -> None:
        if sig == real_sig:
            return
        query = "&".join(
            [f"exp={encode(exp)}", f"sig={encode(sig)}", *(f"{encode(k)}={encode(v)}" for k, v in extra.items())]
        )
        answer = request(port, "GET", f"/api/images/{image_id}?{query}")
        assert_sane(answer, {404}, NOT_FOUND)

    await asyncio.to_thread(check)


async def test_listing_parameters_are_200_or_400(live: dict[str, Any]) -> None:
    port = live["port"]

    @PROPERTY
    @given(
        limit=st.one_of(st.none(), query_values, st.integers(min_value=1, max_value=100).map(str)),
        cursor=st.one_of(st.none(), query_values),
        message_id=st.one_of(st.none(), query_values, st.uuids().map(str)),
    )
    @example(limit="²", cursor=None, message_id=None)
    @example(limit="9" * 5000, cursor=None, message_id=None)
    @example(limit=None, cursor="é", message_id=None)
    @example(limit=None, cursor=None, message_id="00000000-0000-4000-8000-000000000000\n")
    def check(limit: Any, cursor: Any, message_id: Any) -> None:
        params = {"limit": limit, "cursor": cursor, "message_id": message_id}
        query = "&".join(f"{name}={encode(value)}" for name, value in params.items() if value is not None)
        answer = request(port, "GET", f"/api/images?{query}", AUTH)
        assert_sane(answer, {200, 400}, {"bad_request"})
        if isinstance(limit, bytes):
            limit = limit.decode("utf-8", "replace")
        valid_limit = limit is None or (
            isinstance(limit, str) and re.fullmatch(r"[0-9]{1,3}", limit) and 1 <= int(limit) <= 100
        )
        if not valid_limit:
            assert answer.status == 400

    await asyncio.to_thread(check)


async def test_auth_headers_never_crash(live: dict[str, Any]) -> None:
    port, image_id = live["port"], live["image"]["id"]

    @PROPERTY
    @given(
        authorization=st.one_of(
            st.none(),
            header_values,
            header_values.map(lambda v: b"Bearer " + (v if isinstance(v, bytes) else v.encode())),
        ),
        user=st.one_of(st.none(), header_values),
        target=st.sampled_from(
            [f"/api/images/{image_id}", f"/api/images/{image_id}/meta", "/api/images", "/api/storage/stats"]
        ),
    )
    @example(authorization="Bearer t\u00e9st", user=b"alice", target="/api/images")
    @example(authorization=f"Bearer {SERVICE_TOKEN}", user="é" * 200, target="/api/images")
    @example(authorization=f"Bearer {SERVICE_TOKEN}", user=b"\xff\xfe", target=f"/api/images/{image_id}")
    def check(authorization: Any, user: Any, target: str) -> None:
        headers = [
            (name, value)
            for name, value in (("Authorization", authorization), ("X-User-Id", user))
            if value is not None
        ]
        answer = request(port, "GET", target, headers)
        assert_sane(answer, {200, 400, 401, 404}, {"bad_request", "unauthorized", "not_found"})

    await asyncio.to_thread(check)


async def test_path_ids_are_404(live: dict[str, Any]) -> None:
    port = live["port"]

    @PROPERTY
    @given(segment=path_segments, suffix=st.sampled_from(["", "/meta"]))
    @example(segment="00000000-0000-4000-8000-000000000000\n", suffix="")
    def check(segment: str | bytes, suffix: str) -> None:
        answer = request(port, "GET", f"/api/images/{encode(segment)}{suffix}", AUTH)
        assert_sane(answer, {404}, NOT_FOUND)

    await asyncio.to_thread(check)


async def test_conditional_and_range_headers_never_crash(live: dict[str, Any]) -> None:
    port, image = live["port"], live["image"]
    size, sha = image["size_bytes"], image["sha256"]

    @PROPERTY
    @given(
        range_=st.one_of(st.none(), range_headers(size), header_values),
        if_match=st.one_of(st.none(), tag_lists(sha), header_values),
        if_none_match=st.one_of(st.none(), tag_lists(sha), header_values),
        if_range=st.one_of(st.none(), tag_lists(sha), header_values, st.just("Wed, 21 Oct 2015 07:28:00 GMT")),
        extra=st.dictionaries(st.sampled_from(["download", "filename", "w", "format", "x"]), short_values, max_size=3),
        method=st.sampled_from(["GET", "HEAD"]),
    )
    @example(range_="bytes=-0", if_match=None, if_none_match=None, if_range=None, extra={}, method="GET")
    @example(range_=f"bytes={'9' * 5000}-", if_match=None, if_none_match=None, if_range=None, extra={}, method="GET")
    def check(
        range_: Any, if_match: Any, if_none_match: Any, if_range: Any, extra: dict[str, Any], method: str
    ) -> None:
        headers = list(AUTH)
        for name, value in (
            ("Range", range_),
            ("If-Match", if_match),
            ("If-None-Match", if_none_match),
            ("If-Range", if_range),
        ):
            if value is not None:
                headers.append((name, value))
        query = "&".join(f"{encode(k)}={encode(v)}" for k, v in extra.items())
        answer = request(port, method, f"/api/images/{image['id']}?{query}", headers)
        assert_sane(answer, {200, 206, 304, 412, 416}, {"precondition_failed", "range_not_satisfiable"})
        if answer.status in (200, 206, 304):
            assert answer.headers["etag"] == f'"{sha}"'

    await asyncio.to_thread(check)
