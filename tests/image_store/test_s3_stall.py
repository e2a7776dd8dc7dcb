"""An object store that accepts connections but makes no progress (a partition, a wedged load
balancer), against the image-store as operators run it (`retina image-store`, a real process).

A StallingProxy sits between the store and moto. Expected: every S3 call gives up after
S3_OPERATION_TIMEOUT_SECONDS and the request answers 503 storage_unavailable with Retry-After;
no database transaction or pooled connection waits on S3, so requests that need no S3 keep
answering; an upload whose client has gone is abandoned and records nothing, even once S3
answers again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import auth_headers
from tests.image_store.conftest import form, png, row_counts
from tests.image_store.s3_support import BlobView, MotoServer, StallingProxy, key_of
from tests.image_store.store_process import store_process

pytestmark = pytest.mark.parametrize("storage_backend", ["s3"], indirect=True)

DEADLINE = 1.5  # S3_OPERATION_TIMEOUT_SECONDS for these tests
MARGIN = 1.5  # receiving, decoding and answering, on a busy two-core machine
PROMPT = 1.0  # what "answers promptly" means for a request that needs no S3


@pytest.fixture
def proxy(moto_server: MotoServer) -> Iterator[StallingProxy]:
    stalling = StallingProxy(moto_server.port)
    stalling.start()
    try:
        yield stalling
    finally:
        stalling.close()  # bytes held back are dropped, never delivered


@pytest.fixture
def store(store_env: dict[str, str], proxy: StallingProxy, tmp_path: Path) -> Iterator[str]:
    env = {
        **store_env,
        "S3_ENDPOINT_URL": proxy.endpoint,
        "S3_OPERATION_TIMEOUT_SECONDS": str(DEADLINE),
        # Two connections: six uploads holding one each across the PUT would starve everything.
        "DB_POOL_MIN_SIZE": "1",
        "DB_POOL_MAX_SIZE": "2",
        "IMAGE_ROW_CACHE_ENTRIES": "0",
    }
    with store_process(env, tmp_path / "store.log") as (_, url):
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No request here may take longer than the deadline and its margin: a hang fails the test.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE + MARGIN + 2)) as session:
        yield session


async def post_image(http: aiohttp.ClientSession, store: str, data: bytes, user: str = "alice") -> tuple[Any, float]:
    """(status, Retry-After, body) and the seconds the answer took."""
    started = time.monotonic()
    async with http.post(f"{store}/api/images", data=form(data), headers=auth_headers(user)) as response:
        answer = (response.status, response.headers.get("Retry-After"), await response.json())
    return answer, time.monotonic() - started


def storage_unavailable(answer: tuple[int, str | None, Any]) -> bool:
    status, retry_after, body = answer
    return status == 503 and retry_after is not None and body["error"]["code"] == "storage_unavailable"


async def timed_get(http: aiohttp.ClientSession, url: str, user: str = "alice") -> tuple[int, float]:
    started = time.monotonic()
    async with http.get(url, headers=auth_headers(user)) as response:
        await response.read()
        return response.status, time.monotonic() - started


async def idle_in_transaction(db: asyncpg.Connection) -> int:
    """The store's connections to this test's database that sit in an open transaction."""
    return int(
        await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
        )
    )


def temp_files(store_env: dict[str, str]) -> list[Path]:
    tmp = Path(store_env["IMAGE_STORAGE_PATH"]) / ".tmp"
    return sorted(tmp.iterdir()) if tmp.exists() else []


async def test_a_stalled_upload_answers_503_in_time_and_records_nothing(
    store: str, proxy: StallingProxy, http: aiohttp.ClientSession, db: asyncpg.Connection, store_env: dict[str, str]
) -> None:
    proxy.stall()
    answer, took = await post_image(http, store, png(30, 30))
    assert storage_unavailable(answer), answer
    assert took < DEADLINE + MARGIN, f"answered after {took:.1f} s"
    assert await row_counts(db) == (0, 0)
    assert temp_files(store_env) == []


async def test_requests_without_s3_keep_answering_while_uploads_are_stuck(
    store: str,
    proxy: StallingProxy,
    http: aiohttp.ClientSession,
    db: asyncpg.Connection,
    blobs: BlobView,
    store_env: dict[str, str],
) -> None:
    (status, _, first), _ = await post_image(http, store, png(40, 40))
    assert status == 201, first
    proxy.stall()
    uploads = [asyncio.ensure_future(post_image(http, store, png(41 + n, 41))) for n in range(6)]
    try:
        await asyncio.sleep(0.5)  # received, decoded, and now waiting on S3
        assert not any(upload.done() for upload in uploads), "the uploads are stuck on S3, not refused earlier"
        for _ in range(3):
            listed = await timed_get(http, f"{store}/api/images")
            meta = await timed_get(http, f"{store}/api/images/{first['id']}/meta")
            assert listed[0] == 200, listed
            assert listed[1] < PROMPT, f"listing took {listed[1]:.2f} s during the stall"
            assert meta[0] == 200, meta
            assert meta[1] < PROMPT, f"metadata took {meta[1]:.2f} s during the stall"
            assert await idle_in_transaction(db) == 0, "no transaction is held across an S3 call"
            ready = await timed_get(http, f"{store}/readyz")
            assert ready[0] == 200, "the replica stays in its Service: what needs no S3 is served"
            assert ready[1] < PROMPT, f"readiness took {ready[1]:.2f} s during the stall"
            await asyncio.sleep(0.1)
        answers = await asyncio.gather(*uploads)
    finally:
        for upload in uploads:
            upload.cancel()
        await asyncio.gather(*uploads, return_exceptions=True)
    for answer, took in answers:
        assert storage_unavailable(answer), answer
        assert took < DEADLINE + MARGIN, f"answered after {took:.1f} s"
    assert await row_counts(db) == (1, 1), "the stalled uploads recorded nothing"
    assert temp_files(store_env) == []
    proxy.close()
    assert blobs.keys() == [key_of(first["sha256"])]


async def test_stalled_read_answers_503_in_time(store: str, proxy: StallingProxy, http: aiohttp.ClientSession) -> None:
    (status, _, record), _ = await post_image(http, store, png(50, 50))
    assert status == 201, record
    proxy.stall()
    started = time.monotonic()
    async with http.get(f"{store}/api/images/{record['id']}", headers=auth_headers()) as response:
        body = await response.json()
        assert response.status == 503, body
        assert response.headers["Retry-After"] == "2"
        assert body["error"]["code"] == "storage_unavailable"
    took = time.monotonic() - started
    assert took < DEADLINE + MARGIN, f"answered after {took:.1f} s (4 x 30 s before)"
    # A HEAD needs only the row: it answers at once.
    head = await http.head(f"{store}/api/images/{record['id']}", headers=auth_headers())
    assert head.status == 200
    proxy.resume()
    served = await timed_get(http, f"{store}/api/images/{record['id']}")
    assert served[0] == 200, "the store serves again as soon as S3 does"


async def test_an_upload_whose_client_left_during_a_stall_records_nothing(
    store: str, proxy: StallingProxy, db: asyncpg.Connection, blobs: BlobView, store_env: dict[str, str]
) -> None:
    proxy.stall()
    async with aiohttp.ClientSession() as impatient:
        with pytest.raises(asyncio.TimeoutError):
            await impatient.post(
                f"{store}/api/images",
                data=form(png(60, 60)),
                headers=auth_headers(),
                timeout=aiohttp.ClientTimeout(total=0.5),
            )
    # The object store comes back after the client has gone: nothing may complete the upload now.
    await asyncio.sleep(0.3)
    proxy.resume()
    await asyncio.sleep(DEADLINE + 0.5)
    assert await row_counts(db) == (0, 0), "an upload its client gave up on is abandoned"
    assert temp_files(store_env) == []
    # A request the stalled connection had already carried may still reach the bucket: that
    # object has no row, and the integrity check reports it as an orphan after the grace period.
    for key in blobs.keys():  # noqa: SIM118 - BlobView.keys() lists the bucket; it is no dict
        assert await db.fetchval("SELECT count(*) FROM image_blobs WHERE storage_key = $1", key) == 0
