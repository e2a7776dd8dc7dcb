"""The per-replica cache of image rows: invalidated on every replica at once, bounded, expiry-true.

Two image-store apps share one database and one storage directory, as two replicas would. The
same bytes are uploaded twice so that deleting one image leaves the file on disk: a replica
that still answered 200 could then only be serving a stale cached row.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from services.image_store.http.handlers import IMAGE_SERVICE_KEY
from services.image_store.row_cache import ImageRowCache
from tests.conftest import auth_headers
from tests.image_store.conftest import png, upload

# LISTEN/NOTIFY: .ci/run runs these on both kinds of test server, and each also through PgBouncer.
pytestmark = [pytest.mark.postgres_paths, pytest.mark.pgbouncer]


def cache_of(client: TestClient) -> ImageRowCache:
    return client.server.app[IMAGE_SERVICE_KEY].row_cache


async def get_status(client: TestClient, image_id: str, user: str = "alice") -> int:
    response = await client.get(f"/api/images/{image_id}", headers=auth_headers(user))
    await response.read()
    return response.status


async def until_status(client: TestClient, image_id: str, status: int, within: float = 2.0) -> float:
    """Seconds until the image answers `status` (fails after `within`)."""
    started = time.monotonic()
    while (current := await get_status(client, image_id)) != status:
        assert time.monotonic() - started < within, f"still {current} after {within} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
async def replicas(client_for: Callable[..., Awaitable[TestClient]]) -> tuple[TestClient, ...]:
    first = await client_for()
    second = await client_for()
    assert cache_of(first).active, "listener did not connect"
    assert cache_of(second).active, "listener did not connect"
    return first, second


async def test_delete_on_one_replica_is_not_served_by_another(replicas: tuple[TestClient, ...]) -> None:
    a, b = replicas
    data = png(color=(10, 120, 200))
    kept = await (await upload(a, data)).json()
    doomed = await (await upload(a, data)).json()
    assert kept["sha256"] == doomed["sha256"]  # one file on disk for both
    for image in (kept, doomed):
        assert await get_status(b, image["id"]) == 200
        assert cache_of(b).get(uuid.UUID(image["id"])) is not None
    # The cache holds rows, not decisions: another user is still refused.
    assert await get_status(b, doomed["id"], user="mallory") == 404

    response = await a.delete(f"/api/images/{doomed['id']}", headers=auth_headers())
    assert response.status == 204
    waited = await until_status(b, doomed["id"], 404, within=1.0)
    assert waited < 1.0
    assert cache_of(b).get(uuid.UUID(doomed["id"])) is None
    assert await get_status(b, kept["id"]) == 200  # the shared file is still there
    # The replica that deleted it never serves it again either, not even for a moment.
    assert await get_status(a, doomed["id"]) == 404


async def test_expiry_is_honoured_for_cached_rows(replicas: tuple[TestClient, ...], db: asyncpg.Connection) -> None:
    _, b = replicas
    image = await (await upload(b, png(color=(1, 2, 3)))).json()
    await db.execute("UPDATE images SET expires_at = now() + interval '1.5 seconds' WHERE id = $1", image["id"])
    await until_status(b, image["id"], 200)  # the UPDATE's notification may still be on its way
    assert await get_status(b, image["id"]) == 200
    assert cache_of(b).get(uuid.UUID(image["id"])) is not None
    # No change in the database after this point: only the cache's own clock can refuse it.
    await asyncio.sleep(1.6)
    assert await get_status(b, image["id"]) == 404
    assert cache_of(b).get(uuid.UUID(image["id"])) is None


async def test_cache_is_bounded(client_for: Callable[..., Awaitable[TestClient]]) -> None:
    client = await client_for(IMAGE_ROW_CACHE_ENTRIES="3")
    images = [await (await upload(client, png(color=(i, 50, 90)))).json() for i in range(6)]
    for image in images:
        assert await get_status(client, image["id"]) == 200
    assert len(cache_of(client)) == 3
    for image in images:  # evicted rows are simply looked up again
        assert await get_status(client, image["id"]) == 200
    assert len(cache_of(client)) == 3


async def test_no_cache_without_entries(client_for: Callable[..., Awaitable[TestClient]]) -> None:
    client = await client_for(IMAGE_ROW_CACHE_ENTRIES="0")
    image = await (await upload(client, png())).json()
    assert await get_status(client, image["id"]) == 200
    assert not cache_of(client).active
    assert len(cache_of(client)) == 0


async def test_truncate_empties_every_cache(replicas: tuple[TestClient, ...], db: asyncpg.Connection) -> None:
    a, b = replicas
    image = await (await upload(a, png(color=(7, 7, 7)))).json()
    assert await get_status(b, image["id"]) == 200
    await db.execute("TRUNCATE images CASCADE")
    await until_status(b, image["id"], 404, within=1.0)
    assert len(cache_of(b)) == 0


async def test_cache_is_not_trusted_while_the_listener_is_down(replicas: tuple[TestClient, ...]) -> None:
    _, b = replicas
    cache = cache_of(b)
    image = await (await upload(b, png(color=(5, 6, 7)))).json()
    assert await get_status(b, image["id"]) == 200
    assert len(cache) == 1
    cache.set_listening(False)  # what the listener reports when its connection drops
    assert len(cache) == 0
    assert await get_status(b, image["id"]) == 200
    assert len(cache) == 0  # nothing cached while notifications cannot arrive
    cache.set_listening(True)
