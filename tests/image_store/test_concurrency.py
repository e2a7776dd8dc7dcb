"""Identical bytes uploaded and deleted at the same time never lose a file a row points to."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.image_store.http.handlers import IMAGE_SERVICE_KEY
from tests.conftest import auth_headers
from tests.image_store.conftest import BACKENDS, png, upload
from tests.image_store.s3_support import BlobView, key_of

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


# ---- the interleavings, one at a time --------------------------------------------------------
# Uploads write bytes before, and deletions delete them after, their short transactions (no
# connection waits on storage; uploads.py explains the order). These tests stop one side at the
# worst moment and let the other run to the end.


WAIT = 5.0  # any step here that takes longer is stuck


class Gate:
    """Wraps a storage method: the first call (after doing its work, or before, as asked) waits
    until the test opens the gate; `reached` says the call is there."""

    def __init__(self, method: Callable[..., Awaitable[Any]], *, before: bool) -> None:
        self.method = method
        self.before = before
        self.reached = asyncio.Event()
        self.opened = asyncio.Event()
        self.calls = 0

    async def __call__(self, *args: Any) -> Any:
        self.calls += 1
        first = self.calls == 1
        if first and self.before:
            self.reached.set()
            await self.opened.wait()
        result = await self.method(*args)
        if first and not self.before:
            self.reached.set()
            await self.opened.wait()
        return result


@pytest.fixture
def gate(store_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Gate]]:
    """`gate("delete", before=True)` wraps that method of the app's storage. Every gate opens when
    the test ends, before the app closes, so a failed test never leaves a request waiting."""
    made: list[Gate] = []

    def wrap(name: str, *, before: bool) -> Gate:
        storage = store_client.app[IMAGE_SERVICE_KEY].storage
        wrapped = Gate(getattr(storage, name), before=before)
        monkeypatch.setattr(storage, name, wrapped)
        made.append(wrapped)
        return wrapped

    yield wrap
    for wrapped in made:
        wrapped.opened.set()


async def served_whole(client: TestClient, record: dict[str, Any], user: str) -> bool:
    response = await client.get(f"/api/images/{record['id']}", headers=auth_headers(user))
    return response.status == 200 and len(await response.read()) == record["size_bytes"]


async def test_an_upload_waits_for_a_deletion_of_its_bytes_in_flight(
    store_client: TestClient, db: asyncpg.Connection, blobs: BlobView, gate: Callable[..., Gate]
) -> None:
    data = png(51, 51, (4, 5, 6))
    first = await (await upload(store_client, data, user="alice")).json()
    deleting = gate("delete", before=True)
    delete = asyncio.ensure_future(store_client.delete(f"/api/images/{first['id']}", headers=auth_headers("alice")))
    await asyncio.wait_for(deleting.reached.wait(), WAIT)  # rows gone, the bytes' DELETE about to start
    assert await db.fetchval("SELECT count(*) FROM image_blobs") == 0
    again = asyncio.ensure_future(upload(store_client, data, user="bob"))
    await asyncio.sleep(0.3)
    assert not again.done(), "the upload waits while the DELETE may still land"
    deleting.opened.set()
    assert (await asyncio.wait_for(delete, WAIT)).status == 204
    uploaded = await asyncio.wait_for(again, WAIT)
    assert uploaded.status == 201
    second = await uploaded.json()
    assert blobs.exists(key_of(second["sha256"])), "written again after the DELETE"
    assert await served_whole(store_client, second, "bob")


async def test_an_upload_raced_by_a_deletion_after_writing_writes_again(
    store_client: TestClient, db: asyncpg.Connection, blobs: BlobView, gate: Callable[..., Gate]
) -> None:
    data = png(52, 52, (7, 8, 9))
    first = await (await upload(store_client, data, user="alice")).json()
    key = key_of(first["sha256"])
    # bob's upload finds the bytes stored (a dedup hit, no write) and stops before its rows ...
    checking = gate("exists", before=False)
    again = asyncio.ensure_future(upload(store_client, data, user="bob"))
    await asyncio.wait_for(checking.reached.wait(), WAIT)
    # ... while alice deletes the only image using them: rows, then the bytes, all done (an upload
    # holding the blob's lock across its storage calls would block this for ever).
    deleted = await asyncio.wait_for(
        store_client.delete(f"/api/images/{first['id']}", headers=auth_headers("alice")), WAIT
    )
    assert deleted.status == 204
    assert not blobs.exists(key)
    checking.opened.set()
    uploaded = await asyncio.wait_for(again, WAIT)
    assert uploaded.status == 201
    second = await uploaded.json()
    assert blobs.exists(key), "the upload saw the deletion and wrote the bytes again"
    assert await served_whole(store_client, second, "bob")
    assert await db.fetchval("SELECT count(*) FROM image_blob_deletions") == 0, "the record went with the new row"


async def test_an_orphan_removal_during_an_upload_of_the_same_bytes_loses_nothing(
    store_client: TestClient, db: asyncpg.Connection, blobs: BlobView, gate: Callable[..., Gate]
) -> None:
    data = png(53, 53, (10, 11, 12))
    first = await (await upload(store_client, data, user="alice")).json()
    assert (await store_client.delete(f"/api/images/{first['id']}", headers=auth_headers("alice"))).status == 204
    key = key_of(first["sha256"])
    # A new blob: bob's upload writes the bytes, then stops before its rows ...
    writing = gate("publish", before=False)
    again = asyncio.ensure_future(upload(store_client, data, user="bob"))
    await asyncio.wait_for(writing.reached.wait(), WAIT)
    assert blobs.exists(key)
    # ... and the integrity repair takes them for an orphan (no row records them yet).
    service = store_client.app[IMAGE_SERVICE_KEY]
    assert await asyncio.wait_for(service.remove_bytes_if_unreferenced(first["sha256"], key), WAIT)
    assert not blobs.exists(key)
    writing.opened.set()
    uploaded = await asyncio.wait_for(again, WAIT)
    assert uploaded.status == 201
    second = await uploaded.json()
    assert writing.calls == 2, "written again after the removal"
    assert blobs.exists(key)
    assert await served_whole(store_client, second, "bob")
