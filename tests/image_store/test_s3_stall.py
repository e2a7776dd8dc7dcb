"""An object store that accepts connections but makes no progress (a partition, a wedged load
balancer), against the image-store as operators run it (`retina image-store`, a real process).

A StallingProxy sits between the store and moto. Expected: every S3 call gives up after
S3_OPERATION_TIMEOUT_SECONDS and the request answers 503 storage_unavailable with Retry-After.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import auth_headers
from tests.image_store.conftest import form, png, row_counts
from tests.image_store.s3_support import MotoServer, StallingProxy
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
