"""GET/HEAD /api/images/{id}: headers, conditional and range requests, both kinds of auth."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import SERVICE_TOKEN, auth_headers
from tests.image_store.conftest import BACKENDS, photo, upload

STORAGE_BACKENDS = BACKENDS  # every test here that reaches storage runs on both (conftest)


@pytest.fixture
async def stored(store_client: TestClient) -> dict[str, Any]:
    response = await upload(store_client, photo("coffee.png"), filename="café ☕.png")
    assert response.status == 201
    return await response.json()


async def expect_not_found(response) -> None:
    assert response.status == 404
    assert await response.json() == {"error": {"code": "not_found", "message": "image not found"}}


async def test_bytes_and_security_headers(store_client: TestClient, stored: dict[str, Any]) -> None:
    response = await store_client.get(f"/api/images/{stored['id']}", headers=auth_headers())
    assert response.status == 200
    data = await response.read()
    assert hashlib.sha256(data).hexdigest() == stored["sha256"]
    assert len(data) == stored["size_bytes"]
    headers = response.headers
    assert headers["Content-Type"] == "image/png"
    assert headers["ETag"] == f'"{stored["sha256"]}"'
    assert headers["Cache-Control"] == "private, max-age=86400, immutable"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "default-src 'none'; sandbox"
    assert headers["Cross-Origin-Resource-Policy"] == "same-site"
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Disposition"] == (
        "inline; filename=\"caf_ _.png\"; filename*=UTF-8''caf%C3%A9%20%E2%98%95.png"
    )
    assert headers["X-Request-ID"]


async def test_head_has_headers_and_no_body(store_client: TestClient, stored: dict[str, Any]) -> None:
    response = await store_client.head(f"/api/images/{stored['id']}", headers=auth_headers())
    assert response.status == 200
    assert int(response.headers["Content-Length"]) == stored["size_bytes"]
    assert response.headers["ETag"] == f'"{stored["sha256"]}"'
    assert await response.read() == b""


async def test_conditional_get_304(store_client: TestClient, stored: dict[str, Any]) -> None:
    etag = f'"{stored["sha256"]}"'
    response = await store_client.get(
        f"/api/images/{stored['id']}", headers={**auth_headers(), "If-None-Match": f'"other", {etag}'}
    )
    assert response.status == 304
    assert response.headers["ETag"] == etag
    assert response.headers["Cache-Control"].startswith("private")
    assert await response.read() == b""
    changed = await store_client.get(
        f"/api/images/{stored['id']}", headers={**auth_headers(), "If-None-Match": '"stale"'}
    )
    assert changed.status == 200
    failed = await store_client.get(f"/api/images/{stored['id']}", headers={**auth_headers(), "If-Match": '"stale"'})
    assert failed.status == 412
    assert (await failed.json())["error"]["code"] == "precondition_failed"


async def test_range_requests(store_client: TestClient, stored: dict[str, Any]) -> None:
    full = await (await store_client.get(f"/api/images/{stored['id']}", headers=auth_headers())).read()
    partial = await store_client.get(f"/api/images/{stored['id']}", headers={**auth_headers(), "Range": "bytes=10-19"})
    assert partial.status == 206
    assert partial.headers["Content-Range"] == f"bytes 10-19/{len(full)}"
    assert await partial.read() == full[10:20]
    assert partial.headers["ETag"] == f'"{stored["sha256"]}"'
    beyond = await store_client.get(
        f"/api/images/{stored['id']}", headers={**auth_headers(), "Range": f"bytes={len(full) + 5}-"}
    )
    assert beyond.status == 416
    assert beyond.headers["Content-Range"] == f"bytes */{len(full)}"
    metrics = await (await store_client.get("/metrics")).text()
    for status in ("200", "206", "416"):
        assert f'image_store_serve_responses_total{{status="{status}"}} 1.0' in metrics


async def test_signed_url_works_without_token(store_client: TestClient, stored: dict[str, Any]) -> None:
    response = await store_client.get(stored["url"])
    assert response.status == 200
    assert hashlib.sha256(await response.read()).hexdigest() == stored["sha256"]


@pytest.mark.storage_untouched
async def test_tampered_expired_and_misbound_signatures_are_404(
    store_client: TestClient, stored: dict[str, Any]
) -> None:
    query = parse_qs(urlsplit(stored["url"]).query)
    exp, sig = query["exp"][0], query["sig"][0]
    base = f"/api/images/{stored['id']}"
    await expect_not_found(await store_client.get(f"{base}?exp={exp}&sig={sig[:-2]}xx"))
    await expect_not_found(await store_client.get(f"{base}?exp={int(exp) + 60}&sig={sig}"))
    await expect_not_found(await store_client.get(f"{base}?exp=1000&sig={sig}"))
    await expect_not_found(await store_client.get(f"{base}?sig={sig}"))
    other = await (await upload(store_client, photo("astronaut.png"))).json()
    await expect_not_found(await store_client.get(f"/api/images/{other['id']}?exp={exp}&sig={sig}"))


async def test_foreign_deleted_expired_and_malformed_ids_look_missing(
    store_client: TestClient, stored: dict[str, Any], db: asyncpg.Connection
) -> None:
    image = f"/api/images/{stored['id']}"
    await expect_not_found(await store_client.get(image, headers=auth_headers("mallory")))
    await expect_not_found(await store_client.get(f"{image}/meta", headers=auth_headers("mallory")))
    await expect_not_found(
        await store_client.get("/api/images/00000000-0000-4000-8000-000000000000", headers=auth_headers())
    )
    for malformed in ("not-a-uuid", "..%2F..%2Fetc%2Fpasswd", "1' OR '1'='1", "0" * 300):
        await expect_not_found(await store_client.get(f"/api/images/{malformed}", headers=auth_headers()))
    await db.execute("UPDATE images SET expires_at = now() - interval '1 second' WHERE id = $1", stored["id"])
    # The replica caches rows; a change made behind its back reaches it as a NOTIFY (milliseconds).
    deadline = time.monotonic() + 1.0
    while (await store_client.get(image, headers=auth_headers())).status != 404:
        assert time.monotonic() < deadline, "the expired image was still served after 1 s"
        await asyncio.sleep(0.01)
    await expect_not_found(await store_client.get(image, headers=auth_headers()))
    await expect_not_found(await store_client.get(stored["url"]))


@pytest.mark.storage_untouched
async def test_serving_needs_a_token_or_a_signature(store_client: TestClient, stored: dict[str, Any]) -> None:
    anonymous = await store_client.get(f"/api/images/{stored['id']}")
    assert anonymous.status == 401
    wrong = await store_client.get(
        f"/api/images/{stored['id']}", headers={"Authorization": "Bearer x" * 3, "X-User-Id": "alice"}
    )
    assert wrong.status == 401
    assert SERVICE_TOKEN not in await wrong.text()
