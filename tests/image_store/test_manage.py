"""meta, PATCH (link), DELETE, listing with cursors, and storage stats."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import auth_headers
from tests.image_store.conftest import BACKENDS, make_message, png, row_counts, upload
from tests.image_store.s3_support import BlobView

STORAGE_BACKENDS = BACKENDS  # every test here that reaches storage runs on both (conftest)


async def test_meta_returns_the_record(store_client: TestClient) -> None:
    record = await (await upload(store_client, png())).json()
    response = await store_client.get(f"/api/images/{record['id']}/meta", headers=auth_headers())
    assert response.status == 200
    meta = await response.json()
    assert {k: v for k, v in meta.items() if k != "url"} == {k: v for k, v in record.items() if k != "url"}


async def test_patch_links_an_image_to_a_message(store_client: TestClient, db: asyncpg.Connection) -> None:
    record = await (await upload(store_client, png())).json()
    message = await make_message(db, "alice")
    url = f"/api/images/{record['id']}"
    response = await store_client.patch(url, json={"message_id": message}, headers=auth_headers())
    assert response.status == 200, await response.text()
    assert (await response.json())["message_id"] == message
    assert await db.fetchval("SELECT has_images FROM messages WHERE id = $1", message) is True
    unlinked = await store_client.patch(url, json={"message_id": None}, headers=auth_headers())
    assert (await unlinked.json())["message_id"] is None


@pytest.mark.storage_untouched
async def test_patch_refuses_bad_input(store_client: TestClient, db: asyncpg.Connection) -> None:
    record = await (await upload(store_client, png())).json()
    url = f"/api/images/{record['id']}"
    foreign_message = await make_message(db, "bob")
    cases = [
        (b"not json", 400, "bad_request"),
        (b"[1, 2]", 400, "bad_request"),
        (b'{"message_id": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", 400, "bad_request"),  # deeper than json goes
        (b"\xff\xfe{}", 400, "bad_request"),
        (b'{"message_id": 5}', 400, "bad_request"),
        (b'{"message_id": "nope"}', 400, "bad_request"),
        (b'{"message_id": null, "owner_id": "mallory"}', 400, "bad_request"),
        (f'{{"message_id": "{foreign_message}"}}'.encode(), 400, "bad_request"),
    ]
    for body, status, code in cases:
        response = await store_client.patch(
            url, data=body, headers={**auth_headers(), "Content-Type": "application/json"}
        )
        assert response.status == status, body
        assert (await response.json())["error"]["code"] == code
    assert await db.fetchval("SELECT message_id FROM images WHERE id = $1", record["id"]) is None
    mallory = await store_client.patch(url, json={"message_id": None}, headers=auth_headers("mallory"))
    assert mallory.status == 404


async def test_delete_keeps_shared_blob_until_last_image(
    store_client: TestClient, db: asyncpg.Connection, blobs: BlobView
) -> None:
    data = png(40, 40)
    first = await (await upload(store_client, data, user="alice")).json()
    second = await (await upload(store_client, data, user="bob")).json()
    foreign = await store_client.delete(f"/api/images/{first['id']}", headers=auth_headers("bob"))
    assert foreign.status == 404
    assert (await store_client.delete(f"/api/images/{first['id']}", headers=auth_headers("alice"))).status == 204
    assert await row_counts(db) == (1, 1)
    assert len(blobs.keys()) == 1
    still = await store_client.get(f"/api/images/{second['id']}", headers=auth_headers("bob"))
    assert still.status == 200
    gone = await store_client.get(f"/api/images/{first['id']}", headers=auth_headers("alice"))
    assert gone.status == 404
    assert (await store_client.delete(f"/api/images/{first['id']}", headers=auth_headers("alice"))).status == 404
    assert (await store_client.delete(f"/api/images/{second['id']}", headers=auth_headers("bob"))).status == 204
    assert await row_counts(db) == (0, 0)
    assert blobs.keys() == []


async def test_listing_pages_through_everything_once(store_client: TestClient, db: asyncpg.Connection) -> None:
    message = await make_message(db, "alice")
    ids = []
    for size in range(5):
        extra = {"message_id": message} if size % 2 == 0 else {}
        ids.append((await (await upload(store_client, png(10 + size, 10), **extra)).json())["id"])
    await upload(store_client, png(99, 9), user="bob")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        response = await store_client.get(f"/api/images?{query}", headers=auth_headers())
        assert response.status == 200
        page = await response.json()
        seen += [image["id"] for image in page["images"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(ids)), "newest first, each exactly once, only alice's"
    filtered = await (await store_client.get(f"/api/images?message_id={message}", headers=auth_headers())).json()
    assert sorted(image["id"] for image in filtered["images"]) == sorted(ids[0::2])


@pytest.mark.storage_untouched
async def test_listing_refuses_bad_parameters(store_client: TestClient) -> None:
    for query in (
        "limit=0",
        "limit=101",
        "limit=abc",
        "cursor=%%%",
        "cursor=bm90LWEtY3Vyc29y",
        "message_id=x",
    ):
        response = await store_client.get(f"/api/images?{query}", headers=auth_headers())
        assert response.status == 400, query
        assert (await response.json())["error"]["code"] == "bad_request"


async def test_storage_stats(store_client: TestClient, db: asyncpg.Connection) -> None:
    await asyncio.gather(*(upload(store_client, png(20 + i, 20)) for i in range(3)))
    await upload(store_client, png(20, 20), user="bob")
    await db.execute("UPDATE images SET expires_at = now() - interval '1 day' WHERE owner_id = 'bob'")
    anonymous = await store_client.get("/api/storage/stats")
    assert anonymous.status == 401
    response = await store_client.get("/api/storage/stats", headers=auth_headers())
    stats = await response.json()
    assert stats["images"] == 4
    assert stats["blobs"] == 3
    assert stats["expired_pending"] == 1
    assert stats["by_mime_type"]["image/png"]["blobs"] == 3
    assert stats["bytes"] == stats["by_mime_type"]["image/png"]["bytes"] > 0
    assert stats["oldest_created_at"] is not None
    metrics = await (await store_client.get("/metrics")).text()
    assert "image_store_images 4.0" in metrics
    assert "image_store_blobs 3.0" in metrics
