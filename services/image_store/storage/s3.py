"""The s3 backend: blobs in S3-compatible object storage through aiobotocore.

Uploads are still received and re-encoded in local scratch space (the decode worker needs a
seekable file); publishing streams that file to `<S3_PREFIX><ab/cd/sha256>`:
- with a checksum the server verifies, and without overwriting (`s3_upload`);
- retried with exponential backoff by botocore's "standard" retry mode (every call here is
  idempotent: the key is the content hash); what still fails becomes `StorageUnavailable` (503).

Every call, its retries and the object's bytes included, ends within `S3_OPERATION_TIMEOUT_SECONDS`
(`s3_client.s3_call`); a listing is bounded page by page, a read by `ObjectBody`. Callers hold no
database connection while they wait on these (see uploads.py and deletion.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, TypeVar

import structlog
from botocore.exceptions import ClientError

from services.image_store.settings import S3Settings
from services.image_store.storage.backend import ReceivedFile, StoredObject, sha256_of_key
from services.image_store.storage.filesystem import ImageStorage, OpTimer, _no_timer
from services.image_store.storage.s3_client import (
    ABSENT,
    ALREADY_THERE,
    ObjectBody,
    error_code,
    s3_call,
    unavailable_on_failure,
)
from services.image_store.storage.s3_upload import HASH_CHUNK, MULTIPART_THRESHOLD, PART_SIZE, S3Uploader

if TYPE_CHECKING:  # stubs only (types-aiobotocore-s3); nothing to import at run time
    from types_aiobotocore_s3 import S3Client

log = structlog.get_logger("retina.image_store.s3")
T = TypeVar("T")


class _Range(TypedDict, total=False):
    """Optional keyword for get_object, left out for a whole-object read."""

    Range: str


_KEY_PATTERN = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{64}$")


class S3BlobStore:
    """BlobStore on a bucket; `scratch` is the local space where uploads are received."""

    name = "s3"

    def __init__(
        self,
        client: S3Client,
        settings: S3Settings,
        scratch: ImageStorage,
        *,
        timer: OpTimer = _no_timer,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
    ) -> None:
        self.client = client
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.scratch = scratch
        self.deadline_seconds = settings.operation_timeout_seconds
        self._timer = timer
        self.uploader = S3Uploader(
            client,
            settings.bucket,
            deadline_seconds=settings.operation_timeout_seconds,
            multipart_threshold=multipart_threshold,
            part_size=part_size,
        )
        self.page_size = 1000  # ListObjectsV2's maximum; tests lower it to cross page boundaries
        self._bucket_answered = False

    def object_key(self, key: str) -> str:
        return f"{self.prefix}{key}"

    # ---- local scratch (same as the filesystem backend) ----------------------------------

    def ensure_layout(self) -> None:
        self.scratch.ensure_layout()

    def temp_paths(self) -> contextlib.AbstractAsyncContextManager[Callable[[str], Path]]:
        return self.scratch.temp_paths()

    async def receive(self, chunks: AsyncIterable[bytes], dest: Path, *, max_bytes: int) -> ReceivedFile:
        return await self.scratch.receive(chunks, dest, max_bytes=max_bytes)

    def local_path(self, key: str) -> Path | None:
        del key
        return None

    # ---- publishing ------------------------------------------------------------------------

    async def publish(self, temp: Path, key: str) -> None:
        size = await asyncio.to_thread(os.path.getsize, temp)
        with self._timer("write"), unavailable_on_failure("publish"):
            try:
                await self.uploader.upload(temp, size, self.object_key(key), sha256_of_key(key))
            except ClientError as exc:
                if error_code(exc) not in ALREADY_THERE:
                    raise
                # Another replica published the same bytes first: content-addressed, so done.
                log.info("s3_object_already_present", key=key)

    # ---- reading, deleting, listing --------------------------------------------------------

    async def exists(self, key: str) -> bool:
        async with s3_call("head", self.deadline_seconds):
            try:
                await self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
            except ClientError as exc:
                if error_code(exc) in ABSENT:
                    return False
                raise
        return True

    async def size_of(self, key: str) -> int | None:
        """The stored object's length (HEAD), or None when there is none."""
        async with s3_call("head", self.deadline_seconds):
            try:
                answer = await self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
            except ClientError as exc:
                if error_code(exc) in ABSENT:
                    return None
                raise
        return int(answer["ContentLength"])

    async def delete(self, key: str) -> bool:
        with self._timer("delete"):
            async with s3_call("delete", self.deadline_seconds):
                await self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        return True

    @contextlib.asynccontextmanager
    async def open_object(
        self, key: str, byte_range: tuple[int, int] | None = None
    ) -> AsyncIterator[ObjectBody | None]:
        """The object's bytes (a byte range when given, inclusive ends); None when missing.

        Reading them shares the call's deadline: what the GET left of it (`ObjectBody`).
        """
        extra: _Range = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else {}
        started = time.monotonic()
        async with s3_call("get", self.deadline_seconds):
            try:
                answer = await self.client.get_object(Bucket=self.bucket, Key=self.object_key(key), **extra)
            except ClientError as exc:
                if error_code(exc) not in ABSENT:
                    raise
                answer = None
        if answer is None:
            yield None
            return
        left = self.deadline_seconds - (time.monotonic() - started)
        async with answer["Body"] as body:
            yield ObjectBody(body, left, self.deadline_seconds)

    async def presigned_get(self, key: str, *, expires_in: int, response_headers: dict[str, str]) -> str:
        """A URL the client fetches directly; S3 answers with these Response* header overrides."""
        params = {"Bucket": self.bucket, "Key": self.object_key(key), **response_headers}
        # Signing is local, but finding credentials may ask the instance metadata service.
        async with s3_call("presign", self.deadline_seconds):
            url: str = await self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)
        return url

    async def sha256_of(self, key: str) -> str | None:
        digest = hashlib.sha256()
        async with self.open_object(key) as body:
            if body is None:
                return None
            with unavailable_on_failure("read"):
                async for chunk in body.chunks(HASH_CHUNK):
                    await asyncio.to_thread(digest.update, chunk)
        return digest.hexdigest()

    async def list_objects(self) -> AsyncIterator[StoredObject]:
        """ListObjectsV2 pages (1,000 keys each) in key order; foreign keys under the prefix are skipped."""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=self.prefix, PaginationConfig={"PageSize": self.page_size}
        )
        async for page in self._pages("list", pages):
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                if _KEY_PATTERN.match(key):
                    yield StoredObject(key, int(item["Size"]), item["LastModified"].timestamp())

    async def _pages(self, operation: str, pages: AsyncIterable[T]) -> AsyncIterator[T]:
        """A paginated listing, each page a call with its own deadline (never held across a yield)."""
        iterator = aiter(pages)
        while True:
            async with s3_call(operation, self.deadline_seconds):
                page = await anext(iterator, None)
            if page is None:
                return
            yield page

    async def remove_stale_uploads(self, older_than_seconds: float) -> int:
        """Local temp files plus multipart uploads a crashed process never completed or aborted."""
        removed = await self.scratch.remove_stale_uploads(older_than_seconds)
        cutoff = time.time() - older_than_seconds
        paginator = self.client.get_paginator("list_multipart_uploads")
        async for page in self._pages("list_uploads", paginator.paginate(Bucket=self.bucket, Prefix=self.prefix)):
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < cutoff:
                    async with s3_call("abort_upload", self.deadline_seconds):
                        await self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                    removed += 1
        return removed

    async def check_ready(self) -> None:
        """Ready once the bucket has answered (a wrong bucket, endpoint or credentials: never).

        After that, an outage of the object store does not make the replica unready: every replica
        would fail together and leave the Service with no endpoint at all, while a ready replica
        answers what needs S3 with a prompt 503 storage_unavailable and serves everything else
        (listings, metadata, HEAD, 304s), which needs only the database.
        """
        if self._bucket_answered:
            return
        async with s3_call("head_bucket", self.deadline_seconds):
            await self.client.head_bucket(Bucket=self.bucket)
        self._bucket_answered = True

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} (S3_BUCKET, S3_PREFIX)"

    async def location_exists(self) -> bool:
        """A missing bucket makes every call fail (StorageUnavailable), so none is made here; a
        prefix is not a thing that exists apart from its objects."""
        return True
