"""Writing one local file as one S3 object, checksummed and without overwriting.

A file up to `multipart_threshold` goes as a single PutObject (the server checks its SHA-256, the
content address, and its MD5); a larger one as a multipart upload with Content-MD5 on every part,
read one part at a time and aborted on any failure. `If-None-Match: *` is sent until the server
refuses it; then an overwrite can only put the same bytes back (the key is their SHA-256).

Each call to S3 (the PutObject with its body, every part, the completion, the abort) is bounded
by `deadline_seconds` as a whole, retries included (`s3_client.deadline`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypedDict

import structlog
from botocore.exceptions import ClientError

from services.image_store.storage.s3_client import deadline, error_code

if TYPE_CHECKING:  # stubs only (types-aiobotocore-s3); nothing to import at run time
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = structlog.get_logger("retina.image_store.s3")

MIB = 1024 * 1024
# S3 needs parts of at least 5 MiB (except the last); 8 MiB keeps a part's buffer small.
MULTIPART_THRESHOLD = 8 * MIB
PART_SIZE = 8 * MIB
HASH_CHUNK = 1 * MIB


class _IfNoneMatch(TypedDict, total=False):
    """Optional keyword for put/complete: botocore rejects None, so the key is left out instead."""

    IfNoneMatch: str


class S3Uploader:
    def __init__(
        self,
        client: S3Client,
        bucket: str,
        *,
        deadline_seconds: float,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.deadline_seconds = deadline_seconds
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.conditional_put = True  # cleared if the server refuses If-None-Match

    async def upload(self, temp: Path, size: int, object_key: str, sha256: str) -> None:
        """Store `temp` (of `size` bytes, whose SHA-256 is `sha256`) at `object_key`."""
        if size <= self.multipart_threshold:
            await self._put_single(temp, object_key, sha256)
        else:
            await self._put_multipart(temp, object_key)

    def _if_none_match(self) -> _IfNoneMatch:
        return {"IfNoneMatch": "*"} if self.conditional_put else {}

    async def _put_single(self, temp: Path, object_key: str, sha256: str) -> None:
        """One PutObject streamed from the file; the server checks its SHA-256 (= the key) and MD5.

        Both, because S3-compatible servers differ in which one they verify (moto, for one,
        checks Content-MD5 only). The MD5 takes one streamed read in a thread first.
        """
        checksum = base64.b64encode(bytes.fromhex(sha256)).decode()
        md5 = await asyncio.to_thread(_file_md5, temp)
        while True:
            stream = await asyncio.to_thread(open, temp, "rb")
            try:
                async with deadline(self.deadline_seconds):
                    await self.client.put_object(
                        Bucket=self.bucket,
                        Key=object_key,
                        Body=stream,
                        ChecksumSHA256=checksum,
                        ContentMD5=md5,
                        ContentType="application/octet-stream",
                        **self._if_none_match(),
                    )
                return
            except ClientError as exc:
                if not self._refused_conditional(exc):
                    raise
            finally:
                await asyncio.to_thread(stream.close)

    def _refused_conditional(self, exc: ClientError) -> bool:
        """Servers without conditional writes answer 501; then put unconditionally (at worst the same
        bytes replace themselves: the key is their hash)."""
        if self.conditional_put and error_code(exc) in {"NotImplemented", "501"}:
            log.warning("s3_conditional_put_unsupported", bucket=self.bucket)
            self.conditional_put = False
            return True
        return False

    async def _put_multipart(self, temp: Path, object_key: str) -> None:
        """Parts read one at a time (memory bounded by the part size); aborted on any failure.

        The abort has a deadline of its own and survives the caller's cancellation (a client that
        went away); an upload it could not abort is removed by the stale-upload clean-up.
        """
        async with deadline(self.deadline_seconds):
            created = await self.client.create_multipart_upload(
                Bucket=self.bucket, Key=object_key, ContentType="application/octet-stream"
            )
        upload_id = created["UploadId"]
        try:
            parts = await self._upload_parts(temp, object_key, upload_id)
            async with deadline(self.deadline_seconds):
                await self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=object_key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    **self._if_none_match(),
                )
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._abort(object_key, upload_id))
            raise

    async def _abort(self, object_key: str, upload_id: str) -> None:
        async with deadline(self.deadline_seconds):
            await self.client.abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)

    async def _upload_parts(self, temp: Path, object_key: str, upload_id: str) -> list[CompletedPartTypeDef]:
        parts: list[CompletedPartTypeDef] = []
        stream = await asyncio.to_thread(open, temp, "rb")
        try:
            while True:
                data, md5 = await asyncio.to_thread(_read_part, stream, self.part_size)
                if not data:
                    return parts
                number = len(parts) + 1
                async with deadline(self.deadline_seconds):
                    answer = await self.client.upload_part(
                        Bucket=self.bucket,
                        Key=object_key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=io.BytesIO(data),  # aiohttp sends a buffer in chunks; raw bytes in one write
                        ContentMD5=md5,
                    )
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
        finally:
            await asyncio.to_thread(stream.close)


def _read_part(stream: IO[bytes], size: int) -> tuple[bytes, str]:
    data = stream.read(size)
    return data, base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(HASH_CHUNK), b""):
            digest.update(block)
    return base64.b64encode(digest.digest()).decode()
