"""The object store failing: down, or answering 500/503, during uploads and serving.

A FaultProxy sits between the image-store and moto. Expected: botocore retries with backoff
(every call is idempotent), then a clear 503 `storage_unavailable` with Retry-After; no rows, no
objects, no temp files, no unfinished multipart uploads left behind.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from common.errors import StorageUnavailable
from services.image_store.http.handlers import IMAGE_SERVICE_KEY
from services.image_store.storage.backend import storage_key
from services.image_store.storage.s3 import S3BlobStore
from tests.conftest import auth_headers
from tests.image_store.conftest import png, row_counts, upload
from tests.image_store.s3_support import BlobView, Fault, FaultProxy, MotoServer, key_of

pytestmark = pytest.mark.parametrize("storage_backend", ["s3"], indirect=True)

ATTEMPTS = 4  # botocore "standard" retry mode as configured: the first try and three retries


@pytest.fixture
async def proxy(moto_server: MotoServer) -> AsyncIterator[FaultProxy]:
    faulty = FaultProxy(moto_server.endpoint)
    await faulty.start()
    try:
        yield faulty
    finally:
        await faulty.close()


@pytest.fixture
async def client(client_for: Any, proxy: FaultProxy) -> TestClient:
    return await client_for(S3_ENDPOINT_URL=proxy.endpoint)


async def expect_unavailable(response: Any) -> None:
    assert response.status == 503, await response.text()
    assert response.headers["Retry-After"] == "2"
    assert await response.json() == {
        "error": {"code": "storage_unavailable", "message": "the image storage is unavailable; retry shortly"}
    }


async def assert_nothing_left(db: asyncpg.Connection, blobs: BlobView) -> None:
    assert await row_counts(db) == (0, 0)
    assert blobs.keys() == []
    assert blobs.temp_files() == []
    assert blobs.pending_multipart_uploads() == []


async def test_upload_while_s3_answers_503_is_a_clean_503(
    client: TestClient, proxy: FaultProxy, db: asyncpg.Connection, blobs: BlobView
) -> None:
    proxy.faults.append(Fault("PUT", status=503))
    await expect_unavailable(await upload(client, png()))
    assert len(proxy.requests("PUT")) == ATTEMPTS, "retried with backoff, then gave up"
    await assert_nothing_left(db, blobs)
    metrics = await (await client.get("/metrics")).text()
    assert 'image_store_uploads_total{outcome="error"} 1.0' in metrics


async def test_transient_500s_are_retried_and_the_upload_succeeds(
    client: TestClient, proxy: FaultProxy, db: asyncpg.Connection, blobs: BlobView
) -> None:
    proxy.faults.append(Fault("PUT", status=500, times=2))
    response = await upload(client, png(33, 33))
    assert response.status == 201, await response.text()
    record = await response.json()
    assert len(proxy.requests("PUT")) == 3
    assert blobs.keys() == [key_of(record["sha256"])]
    assert hashlib.sha256(blobs.read(key_of(record["sha256"]))).hexdigest() == record["sha256"]
    assert await row_counts(db) == (1, 1)


async def test_publish_sends_checksums_and_if_none_match(
    client: TestClient, proxy: FaultProxy, blobs: BlobView
) -> None:
    record = await (await upload(client, png(34, 34))).json()
    [(_, path, _, headers)] = proxy.requests("PUT")
    assert path.endswith(f"/retina/images/{key_of(record['sha256'])}")
    stored = blobs.read(key_of(record["sha256"]))
    assert headers["x-amz-checksum-sha256"] == base64.b64encode(bytes.fromhex(record["sha256"])).decode()
    assert headers["Content-MD5"] == base64.b64encode(hashlib.md5(stored, usedforsecurity=False).digest()).decode()
    assert headers["If-None-Match"] == "*"
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=retina-test/")
    # A second upload of the same bytes is a dedup hit: HEAD finds the object, no second PUT.
    again = await upload(client, png(34, 34), user="bob")
    assert again.status == 201
    assert len(proxy.requests("PUT")) == 1
    assert len(proxy.requests("HEAD")) >= 1


async def test_serving_while_s3_fails_is_a_clean_503(client: TestClient, proxy: FaultProxy) -> None:
    record = await (await upload(client, png(35, 35))).json()
    proxy.faults.append(Fault("GET", path_contains=record["sha256"], status=500))
    await expect_unavailable(await client.get(f"/api/images/{record['id']}", headers=auth_headers()))
    assert len(object_gets(proxy, record["sha256"])) == ATTEMPTS
    proxy.faults.clear()
    served = await client.get(f"/api/images/{record['id']}", headers=auth_headers())
    assert served.status == 200
    assert hashlib.sha256(await served.read()).hexdigest() == record["sha256"]


async def test_dropped_connections_during_serving_are_retried(client: TestClient, proxy: FaultProxy) -> None:
    record = await (await upload(client, png(36, 36))).json()
    proxy.faults.append(Fault("GET", path_contains=record["sha256"], status=0, times=2))
    served = await client.get(f"/api/images/{record['id']}", headers=auth_headers())
    assert served.status == 200
    assert hashlib.sha256(await served.read()).hexdigest() == record["sha256"]
    assert len(object_gets(proxy, record["sha256"])) == 3


async def test_failed_multipart_upload_is_aborted(
    client: TestClient, proxy: FaultProxy, blobs: BlobView, tmp_path: Path
) -> None:
    store = client.app[IMAGE_SERVICE_KEY].storage
    assert isinstance(store, S3BlobStore)
    store.uploader.multipart_threshold = store.uploader.part_size = 5 * 1024 * 1024
    data = os.urandom(11 * 1024 * 1024)
    source = tmp_path / "big"
    source.write_bytes(data)
    proxy.faults.append(Fault("PUT", query_contains="partNumber=2", status=503))
    with pytest.raises(StorageUnavailable):
        await store.publish(source, storage_key(hashlib.sha256(data).hexdigest()))
    assert len(proxy.requests("PUT", "partNumber=2")) == ATTEMPTS
    assert len(proxy.requests("DELETE", "uploadId=")) == 1, "the upload was aborted"
    assert blobs.pending_multipart_uploads() == []
    assert blobs.keys() == []


async def test_s3_down(client_for: Any, db: asyncpg.Connection, tmp_path: Path, store_env: dict[str, str]) -> None:
    """A server of our own that we stop: uploads and reads are 503, nothing is half-written, and the
    replica stays ready (every replica would fail together; what needs no S3 is still served)."""
    own = MotoServer(tmp_path / "own-moto.log")
    own.start()
    try:
        bucket = own.new_bucket()
        client = await client_for(S3_ENDPOINT_URL=own.endpoint, S3_BUCKET=bucket)
        record = await (await upload(client, png(37, 37))).json()
        assert (await client.get("/readyz")).status == 200
        own.stop()
        await expect_unavailable(await client.get(f"/api/images/{record['id']}", headers=auth_headers()))
        await expect_unavailable(await upload(client, png(38, 38)))
        assert await row_counts(db) == (1, 1), "the failed upload recorded nothing"
        assert list((Path(store_env["IMAGE_STORAGE_PATH"]) / ".tmp").iterdir()) == []
        ready = await client.get("/readyz")
        assert ready.status == 200, await ready.text()
        assert (await client.get(f"/api/images/{record['id']}/meta", headers=auth_headers())).status == 200
    finally:
        own.stop()


def object_gets(proxy: FaultProxy, sha256: str) -> list[tuple[str, str, str, dict[str, str]]]:
    """GetObject requests for one blob (start-up also lists abandoned multipart uploads with a GET)."""
    return [seen for seen in proxy.requests("GET") if sha256 in seen[1]]
