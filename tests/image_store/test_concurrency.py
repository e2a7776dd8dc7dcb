"""Identical bytes uploaded and deleted at the same time never lose a file a row points to."""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp.test_utils import TestClient

from tests.conftest import auth_headers
from tests.image_store.conftest import BACKENDS, png, upload
from tests.image_store.s3_support import BlobView

STORAGE_BACKENDS = BACKENDS  # every test here that reaches storage runs on both (conftest)


async def test_concurrent_upload_and_delete_of_the_same_bytes(
    store_client: TestClient, db: asyncpg.Connection, blobs: BlobView
) -> None:
    data = png(50, 50, (1, 2, 3))
    for _ in range(8):
        first = await (await upload(store_client, data, user="alice")).json()
        deleted, uploaded = await asyncio.gather(
            store_client.delete(f"/api/images/{first['id']}", headers=auth_headers("alice")),
            upload(store_client, data, user="bob"),
        )
        assert deleted.status == 204
        assert uploaded.status == 201
        second = await uploaded.json()
        served = await store_client.get(f"/api/images/{second['id']}", headers=auth_headers("bob"))
        assert served.status == 200, "the surviving image's file must exist"
        assert len(await served.read()) == second["size_bytes"]
        assert (await store_client.delete(f"/api/images/{second['id']}", headers=auth_headers("bob"))).status == 204
    # Every blob row still has its file; nothing is left after all deletions.
    for sha, key in await db.fetch("SELECT sha256, storage_key FROM image_blobs"):
        assert blobs.exists(key), sha
    assert await db.fetchval("SELECT count(*) FROM image_blobs") == 0
    assert blobs.keys() == [], "the last delete removed the bytes too"
