"""Conditional and range requests on image bytes (issue 9 item 3, issue 8 items 8-9).

The entity tag is the content's SHA-256. If-Match compares strongly, If-None-Match weakly, `*`
and lists work, If-Range decides whether Range applies, and the store decides all of it once:
a correct If-Match used to come back as an empty, non-JSON 412.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import RangeNotSatisfiable
from services.image_store.http.conditional import select_range
from tests.conftest import auth_headers
from tests.image_store.conftest import png, upload


@pytest.fixture
async def stored(store_client: TestClient) -> dict[str, Any]:
    response = await upload(store_client, png(320, 240), filename="coffee.png")
    assert response.status == 201
    record = await response.json()
    full = await store_client.get(f"/api/images/{record['id']}", headers=auth_headers())
    record["bytes"] = await full.read()
    assert hashlib.sha256(record["bytes"]).hexdigest() == record["sha256"]
    return record


async def get(client: TestClient, image: dict[str, Any], method: str = "GET", **headers: str) -> Any:
    named = {name.replace("_", "-"): value for name, value in headers.items()}
    return await client.request(method, f"/api/images/{image['id']}", headers={**auth_headers(), **named})


async def expect_full(response: Any, image: dict[str, Any]) -> None:
    assert response.status == 200, await response.text()
    assert response.headers["ETag"] == f'"{image["sha256"]}"'
    assert "Content-Range" not in response.headers
    assert await response.read() == image["bytes"]


async def expect_json_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status == status
    assert response.headers["Content-Type"].startswith("application/json")
    body = await response.json()
    assert body["error"]["code"] == code
    return body


async def expect_not_modified(response: Any, image: dict[str, Any]) -> None:
    assert response.status == 304
    assert response.headers["ETag"] == f'"{image["sha256"]}"'
    assert response.headers["Cache-Control"] == "private, max-age=86400, immutable"
    assert await response.read() == b""


def tag(image: dict[str, Any], weak: bool = False) -> str:
    return ("W/" if weak else "") + f'"{image["sha256"]}"'


# ---- If-Match --------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["{tag}", "*", '"other", {tag}', '"a",{tag} , "b"'])
async def test_if_match_that_matches_sends_the_bytes(
    store_client: TestClient, stored: dict[str, Any], header: str
) -> None:
    await expect_full(await get(store_client, stored, If_Match=header.format(tag=tag(stored))), stored)


@pytest.mark.parametrize("header", ['"other"', "{weak}", '"other", {weak}', "not-a-tag", f'"{"0" * 64}"'])
async def test_if_match_that_fails_is_json_412(store_client: TestClient, stored: dict[str, Any], header: str) -> None:
    response = await get(store_client, stored, If_Match=header.format(weak=tag(stored, weak=True)))
    body = await expect_json_error(response, 412, "precondition_failed")
    assert body["error"]["message"] == "the image does not match If-Match"


async def test_if_match_comes_before_if_none_match(store_client: TestClient, stored: dict[str, Any]) -> None:
    failed = await get(store_client, stored, If_Match='"other"', If_None_Match=tag(stored))
    await expect_json_error(failed, 412, "precondition_failed")
    passed = await get(store_client, stored, If_Match=tag(stored), If_None_Match=tag(stored))
    await expect_not_modified(passed, stored)


# ---- If-None-Match ---------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["{tag}", "{weak}", "*", '"other", {weak}'])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_if_none_match_that_matches_is_304(
    store_client: TestClient, stored: dict[str, Any], header: str, method: str
) -> None:
    value = header.format(tag=tag(stored), weak=tag(stored, weak=True))
    await expect_not_modified(await get(store_client, stored, method, If_None_Match=value), stored)


@pytest.mark.parametrize("header", ['"other"', 'W/"other", "stale"', "garbage"])
async def test_if_none_match_that_does_not_match_sends_the_bytes(
    store_client: TestClient, stored: dict[str, Any], header: str
) -> None:
    await expect_full(await get(store_client, stored, If_None_Match=header), stored)


async def test_signed_urls_revalidate_too(store_client: TestClient, stored: dict[str, Any]) -> None:
    response = await store_client.get(stored["url"], headers={"If-None-Match": tag(stored)})
    await expect_not_modified(response, stored)


async def test_date_conditions_are_ignored_without_last_modified(
    store_client: TestClient, stored: dict[str, Any]
) -> None:
    future, past = "Fri, 01 Jan 2100 00:00:00 GMT", "Thu, 01 Jan 1970 00:00:00 GMT"
    response = await get(store_client, stored, If_Modified_Since=future, If_Unmodified_Since=past)
    await expect_full(response, stored)
    assert "Last-Modified" not in response.headers


# ---- Range and If-Range ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "start", "stop"),
    [
        ("bytes=10-19", 10, 20),
        ("bytes=0-", 0, None),
        ("bytes=-10", -10, None),
        ("bytes=-99999999999", 0, None),
        ("bytes=5-99999999999999999999999", 5, None),
        ("BYTES=0-0", 0, 1),
    ],
)
async def test_satisfiable_ranges_are_206(
    store_client: TestClient, stored: dict[str, Any], spec: str, start: int, stop: int | None
) -> None:
    data = stored["bytes"]
    expected = data[start:stop] if start >= 0 else data[start:]
    response = await get(store_client, stored, Range=spec)
    assert response.status == 206
    first = len(data) + start if start < 0 else start
    assert response.headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"
    assert int(response.headers["Content-Length"]) == len(expected)
    assert response.headers["ETag"] == tag(stored)
    assert await response.read() == expected


@pytest.mark.parametrize("spec", ["bytes=-0", "bytes=20-10", "bytes={size}-", "bytes=" + "9" * 5000 + "-", "bytes=-"])
async def test_unsatisfiable_ranges_are_json_416(store_client: TestClient, stored: dict[str, Any], spec: str) -> None:
    size = len(stored["bytes"])
    response = await get(store_client, stored, Range=spec.format(size=size))
    await expect_json_error(response, 416, "range_not_satisfiable")
    assert response.headers["Content-Range"] == f"bytes */{size}"


@pytest.mark.parametrize("spec", ["items=0-5", "bytes=0-1,4-5", "bytes 0-5"])
async def test_ranges_we_do_not_serve_are_ignored(store_client: TestClient, stored: dict[str, Any], spec: str) -> None:
    await expect_full(await get(store_client, stored, Range=spec), stored)


async def test_if_range_with_the_current_tag_sends_the_range(store_client: TestClient, stored: dict[str, Any]) -> None:
    response = await get(store_client, stored, Range="bytes=0-9", If_Range=tag(stored))
    assert response.status == 206
    assert await response.read() == stored["bytes"][:10]


@pytest.mark.parametrize("if_range", ['"other"', "{weak}", "Wed, 21 Oct 2015 07:28:00 GMT", "junk"])
async def test_if_range_that_does_not_match_sends_everything(
    store_client: TestClient, stored: dict[str, Any], if_range: str
) -> None:
    response = await get(store_client, stored, Range="bytes=0-9", If_Range=if_range.format(weak=tag(stored, weak=True)))
    await expect_full(response, stored)


async def test_head_range_has_the_headers_and_no_body(store_client: TestClient, stored: dict[str, Any]) -> None:
    response = await get(store_client, stored, "HEAD", Range="bytes=10-19")
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes 10-19/{len(stored['bytes'])}"
    assert response.headers["Content-Length"] == "10"
    assert await response.read() == b""


async def test_every_outcome_is_counted_by_status(store_client: TestClient, stored: dict[str, Any]) -> None:
    await get(store_client, stored, If_None_Match=tag(stored))
    await get(store_client, stored, If_Match='"other"')
    await get(store_client, stored, Range="bytes=-0")
    await get(store_client, stored, Range="bytes=0-0")
    metrics = await (await store_client.get("/metrics")).text()
    for status in ("304", "412", "416", "206"):
        assert f'image_store_serve_responses_total{{status="{status}"}} 1.0' in metrics, status


# ---- a row whose file is gone ----------------------------------------------------------------


async def test_a_missing_file_is_json_404_logged_and_counted(
    store_client: TestClient, stored: dict[str, Any], storage_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sha = stored["sha256"]
    (storage_root / sha[:2] / sha[2:4] / sha).unlink()
    caplog.set_level(logging.ERROR)
    for method, target in (("GET", f"/api/images/{stored['id']}"), ("GET", stored["url"]), ("HEAD", stored["url"])):
        response = await store_client.request(method, target, headers=auth_headers() if "sig" not in target else {})
        assert response.status == 404
        assert response.headers["Content-Type"].startswith("application/json")
        if method == "GET":
            assert await response.json() == {"error": {"code": "not_found", "message": "image not found"}}
    formatter = logging.getLogger().handlers[0].formatter
    assert formatter is not None
    lines = [json.loads(formatter.format(r)) for r in caplog.records if r.levelno >= logging.ERROR]
    missing = [line for line in lines if line["event"] == "image_file_missing"]
    assert len(missing) == 3
    assert missing[0]["level"] == "error"
    assert missing[0]["image_id"] == stored["id"]
    assert missing[0]["sha256"] == sha
    metrics = await (await store_client.get("/metrics")).text()
    assert "image_store_missing_files_total 3.0" in metrics
    # The row is still there for the integrity check to report; nothing was deleted by serving.
    meta = await store_client.get(f"/api/images/{stored['id']}/meta", headers=auth_headers())
    assert meta.status == 200


# ---- the range grammar on its own ------------------------------------------------------------


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    size=st.integers(min_value=1, max_value=10_000),
    first=st.one_of(st.none(), st.integers(min_value=0, max_value=20_000)),
    last=st.one_of(st.none(), st.integers(min_value=0, max_value=20_000)),
)
def test_select_range_agrees_with_rfc_9110(size: int, first: int | None, last: int | None) -> None:
    spec = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    if first is None and last is None:
        expected: bytes | None = None  # no range at all: unsatisfiable
    elif first is None:
        expected = data[-last:] if last else None
    elif first >= size or (last is not None and last < first):
        expected = None
    else:
        expected = data[first : (size if last is None else last + 1)]
    if expected is None:
        with pytest.raises(RangeNotSatisfiable) as refused:
            select_range(spec, None, "t", size)
        assert refused.value.headers == {"Content-Range": f"bytes */{size}"}
        return
    chosen = select_range(spec, None, "t", size)
    assert chosen is not None
    assert data[chosen.start : chosen.start + chosen.length] == expected
    assert chosen.content_range == f"bytes {chosen.start}-{chosen.start + chosen.length - 1}/{size}"
    assert select_range(spec, 'W/"t"', "t", size) is None, "a weak If-Range tag never matches"
    assert select_range(spec, '"t"', "t", size) == chosen
