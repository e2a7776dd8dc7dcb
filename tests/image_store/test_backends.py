"""Both storage backends through HTTP, plus what only object storage has: redirects to presigned
URLs, multipart publishing, abandoned multipart uploads, paginated listing, settings checks."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from common.settings import SettingsError
from services.image_store.app import MAINTENANCE_KEY
from services.image_store.http.handlers import IMAGE_SERVICE_KEY
from services.image_store.settings import load_image_store_settings
from services.image_store.storage.backend import storage_key
from services.image_store.storage.s3 import S3BlobStore
from tests.conftest import auth_headers
from tests.image_store.conftest import BACKENDS, photo, png, row_counts, upload
from tests.image_store.s3_support import BlobView, key_of


@pytest.mark.parametrize("storage_backend", BACKENDS, indirect=True)
async def test_upload_dedup_serve_delete(store_client: TestClient, db: asyncpg.Connection, blobs: BlobView) -> None:
    data = photo("chelsea.png")
    first, second = await asyncio.gather(
        upload(store_client, data, user="alice"), upload(store_client, data, user="bob")
    )
    assert (first.status, second.status) == (201, 201)
    alice, bob = await first.json(), await second.json()
    assert alice["sha256"] == bob["sha256"]
    assert blobs.keys() == [key_of(alice["sha256"])], "identical bytes are stored once"
    assert hashlib.sha256(blobs.read(key_of(alice["sha256"]))).hexdigest() == alice["sha256"]
    assert await row_counts(db) == (2, 1)
    assert blobs.temp_files() == []
    assert blobs.pending_multipart_uploads() == []

    served = await store_client.get(f"/api/images/{bob['id']}", headers=auth_headers("bob"))
    assert served.status == 200
    assert hashlib.sha256(await served.read()).hexdigest() == bob["sha256"]

    assert (await store_client.delete(f"/api/images/{alice['id']}", headers=auth_headers("alice"))).status == 204
    assert blobs.keys() == [key_of(bob["sha256"])], "bob still uses the bytes"
    again = await store_client.get(f"/api/images/{bob['id']}", headers=auth_headers("bob"))
    assert again.status == 200
    assert len(await again.read()) == bob["size_bytes"]
    assert (await store_client.delete(f"/api/images/{bob['id']}", headers=auth_headers("bob"))).status == 204
    assert blobs.keys() == []
    assert await row_counts(db) == (0, 0)
    gone = await store_client.get(f"/api/images/{bob['id']}", headers=auth_headers("bob"))
    assert gone.status == 404


@pytest.mark.parametrize("storage_backend", ["s3"], indirect=True)
async def test_redirect_mode_answers_302_to_a_presigned_url(client_for: Any, blobs: BlobView) -> None:
    client = await client_for(IMAGE_SERVE_MODE="redirect")
    record = await (await upload(client, png(40, 30), filename="café.png")).json()
    response = await client.get(f"/api/images/{record['id']}", headers=auth_headers(), allow_redirects=False)
    assert response.status == 302
    assert response.headers["Cache-Control"] == "private, no-store"
    location = response.headers["Location"]
    assert location.startswith(f"{blobs.s3.meta.endpoint_url}/{blobs.bucket}/retina/images/{key_of(record['sha256'])}?")
    assert "X-Amz-Signature=" in location
    assert "X-Amz-Expires=300" in location
    async with aiohttp.ClientSession() as session, session.get(location) as direct:
        assert direct.status == 200
        assert hashlib.sha256(await direct.read()).hexdigest() == record["sha256"]
        assert direct.headers["Content-Type"] == "image/png"
        assert direct.headers["Content-Disposition"].startswith('inline; filename="caf_.png"')
        assert direct.headers["Cache-Control"] == "private, max-age=86400, immutable"
    # The access check still happens first: someone else's token gets a 404, not a URL.
    foreign = await client.get(f"/api/images/{record['id']}", headers=auth_headers("mallory"), allow_redirects=False)
    assert foreign.status == 404
    assert "Location" not in foreign.headers
    # A signed retina URL redirects too, and If-None-Match is answered without S3.
    signed = await client.get(record["url"], allow_redirects=False)
    assert signed.status == 302
    cached = await client.get(
        f"/api/images/{record['id']}",
        headers={**auth_headers(), "If-None-Match": f'"{record["sha256"]}"'},
        allow_redirects=False,
    )
    assert cached.status == 304


@pytest.mark.parametrize("storage_backend", ["s3"], indirect=True)
async def test_proxy_mode_range_and_if_range(store_client: TestClient) -> None:
    record = await (await upload(store_client, photo("astronaut.png"))).json()
    url = f"/api/images/{record['id']}"
    full = await (await store_client.get(url, headers=auth_headers())).read()
    tail = await store_client.get(url, headers={**auth_headers(), "Range": "bytes=-100"})
    assert tail.status == 206
    assert tail.headers["Content-Range"] == f"bytes {len(full) - 100}-{len(full) - 1}/{len(full)}"
    assert await tail.read() == full[-100:]
    stale = await store_client.get(url, headers={**auth_headers(), "Range": "bytes=0-9", "If-Range": '"old"'})
    assert stale.status == 200, "If-Range naming another ETag means the whole image"
    assert await stale.read() == full
    fresh = await store_client.get(
        url, headers={**auth_headers(), "Range": "bytes=0-9", "If-Range": f'"{record["sha256"]}"'}
    )
    assert fresh.status == 206
    assert await fresh.read() == full[:10]
    head = await store_client.head(url, headers=auth_headers())
    assert head.status == 200
    assert int(head.headers["Content-Length"]) == len(full)


@pytest.mark.parametrize("storage_backend", ["s3"], indirect=True)
async def test_multipart_publish_listing_pages_and_abandoned_uploads(
    store_client: TestClient, blobs: BlobView, tmp_path: Path
) -> None:
    store = store_client.app[IMAGE_SERVICE_KEY].storage
    assert isinstance(store, S3BlobStore)
    store.uploader.multipart_threshold = store.uploader.part_size = 5 * 1024 * 1024  # S3's smallest part
    data = os.urandom(12 * 1024 * 1024)
    sha = hashlib.sha256(data).hexdigest()
    source = tmp_path / "big"
    source.write_bytes(data)
    await store.publish(source, storage_key(sha))
    await store.publish(source, storage_key(sha))  # already there: neither an error nor a second copy
    assert blobs.keys() == [key_of(sha)]
    assert blobs.pending_multipart_uploads() == []
    assert await store.sha256_of(storage_key(sha)) == sha

    for index in range(11):
        blobs.write(key_of(hashlib.sha256(str(index).encode()).hexdigest()), b"x")
    blobs.s3.put_object(Bucket=blobs.bucket, Key="retina/images/not-a-blob.txt", Body=b"foreign")
    store.page_size = 4
    listed = [item.key async for item in store.list_objects()]
    assert listed == sorted(listed)
    assert len(listed) == 12, "three pages and more, foreign keys skipped"

    abandoned = blobs.s3.create_multipart_upload(Bucket=blobs.bucket, Key="retina/images/ab/cd/" + "ab" * 32)
    assert blobs.pending_multipart_uploads() != []
    # (moto reports every upload as initiated in 2010, so the age cut-off itself is not testable here.)
    report = await store_client.app[MAINTENANCE_KEY].cleanup()
    assert report.stale_temp_files == 1
    assert blobs.pending_multipart_uploads() == []
    assert abandoned["UploadId"]


def test_s3_settings_are_checked(tmp_path: Path, service_env: dict[str, str]) -> None:
    with pytest.raises(SettingsError) as missing_bucket:
        load_image_store_settings({**service_env, "IMAGE_STORAGE_BACKEND": "s3"})
    assert "S3_BUCKET is required when IMAGE_STORAGE_BACKEND=s3" in missing_bucket.value.problems
    with pytest.raises(SettingsError) as no_redirect:
        load_image_store_settings({**service_env, "IMAGE_SERVE_MODE": "redirect"})
    assert any("IMAGE_SERVE_MODE=redirect needs" in p for p in no_redirect.value.problems)
    settings = load_image_store_settings(
        {**service_env, "IMAGE_STORAGE_BACKEND": "s3", "S3_BUCKET": "b", "S3_PREFIX": "/a/b/", "S3_ENDPOINT_URL": ""}
    )
    assert (settings.s3.prefix, settings.s3.endpoint_url, settings.serve_mode) == ("a/b/", None, "proxy")
    assert load_image_store_settings(service_env).storage_backend == "filesystem"
