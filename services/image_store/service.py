"""ImageService: the image-store's behaviour, independent of HTTP.

An upload goes: receive (stream to a temp file, counting) → validate and re-encode in a decode
worker → publish the file at its content address and record the rows, under the blob's lock.
Temp files never outlive the upload session, whatever fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import stat
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import structlog
from prometheus_client import Gauge

from common.errors import ApiError
from common.settings import ImageStoreSettings
from common.signing import UrlSigner
from services.image_store.decode_pool import DecodePool, DecoderBusy, DecodeTimeout
from services.image_store.errors import (
    BadRequest,
    ImageNotFound,
    RateLimited,
    StoreBusy,
    UploadDisabled,
)
from services.image_store.filenames import sanitize_filename
from services.image_store.metrics import ImageStoreMetrics
from services.image_store.models import BlobInfo, ImageRow, StorageStats
from services.image_store.rate_limit import OwnerRateLimiter
from services.image_store.repository import ImageRepository
from services.image_store.row_cache import ImageRowCache
from services.image_store.storage import storage_error
from services.image_store.storage_backend import BlobStore, ReceivedFile, storage_key
from services.image_store.validation import ImageRejected, ValidationLimits

log = structlog.get_logger("retina.image_store")

MAX_PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class StoredImage:
    row: ImageRow
    duplicate: bool


def _outcome_for(exc: BaseException) -> str:
    return exc.outcome if isinstance(exc, ApiError) else "error"


class UploadSession:
    """One upload: receive bytes once, then commit them. Created by ImageService.upload()."""

    def __init__(self, service: ImageService, owner_id: str, temp_path: Callable[[str], Path]) -> None:
        self._service = service
        self._owner_id = owner_id
        self._temp_path = temp_path
        self.received: ReceivedFile | None = None

    async def receive(self, chunks: AsyncIterable[bytes]) -> ReceivedFile:
        if self.received is not None:
            raise BadRequest("exactly one file part named 'file' is allowed")
        self.received = await self._service.storage.receive(
            chunks, self._temp_path("upload"), max_bytes=self._service.settings.max_size_bytes
        )
        return self.received

    async def commit(self, *, original_filename: str | None, message_id: uuid.UUID | None) -> StoredImage:
        if self.received is None:
            raise BadRequest("a file part named 'file' is required")
        return await self._service.commit_upload(
            self._owner_id,
            self.received,
            self._temp_path("processed"),
            original_filename=original_filename,
            message_id=message_id,
        )


class ImageService:
    def __init__(
        self,
        settings: ImageStoreSettings,
        repository: ImageRepository,
        storage: BlobStore,
        decoder: DecodePool,
        signer: UrlSigner,
        metrics: ImageStoreMetrics,
        row_cache: ImageRowCache | None = None,
    ) -> None:
        self.settings = settings
        # Without a listener (tools, tests that build a service by hand) the cache stays inactive.
        self.row_cache = row_cache if row_cache is not None else ImageRowCache(0, 1.0)
        self.repository = repository
        self.storage = storage
        self.decoder = decoder
        self.signer = signer
        self.metrics = metrics
        self.rate_limiter = OwnerRateLimiter(settings.upload_rate_per_minute)
        self.limits = ValidationLimits(
            allowed_types=settings.allowed_types,
            max_side_px=settings.max_side_px,
            max_pixels=settings.max_pixels,
            max_frames=settings.max_frames,
            reencode=settings.reencode,
            jpeg_quality=settings.jpeg_quality,
        )

    # ---- uploads --------------------------------------------------------------------------

    def check_upload_allowed(self, owner_id: str) -> None:
        if not self.settings.upload_enabled:
            raise UploadDisabled("image uploads are disabled on this server")
        wait = self.rate_limiter.acquire(owner_id)
        if wait > 0:
            retry = self.rate_limiter.retry_after_header(wait)
            raise RateLimited(f"too many uploads; try again in {retry} s", retry_after=retry)

    @contextlib.asynccontextmanager
    async def upload(self, owner_id: str) -> AsyncIterator[UploadSession]:
        """An upload session; its temp files are removed on exit and its outcome is counted."""
        try:
            self.check_upload_allowed(owner_id)
            async with self.storage.temp_paths() as temp_path:
                yield UploadSession(self, owner_id, temp_path)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError | GeneratorExit):
                self.metrics.uploads.labels(_outcome_for(exc)).inc()
            raise

    async def commit_upload(
        self,
        owner_id: str,
        received: ReceivedFile,
        processed_path: Path,
        *,
        original_filename: str | None,
        message_id: uuid.UUID | None,
    ) -> StoredImage:
        if message_id is not None:
            await self._require_owned_message(message_id, owner_id)
        try:
            with _gauge_inc(self.metrics.decodes_in_flight):
                processed = await self.decoder.process(received.path, processed_path, self.limits)
        except DecoderBusy as exc:
            raise StoreBusy("the server is busy processing images; retry shortly", retry_after=2) from exc
        except DecodeTimeout as exc:
            raise ImageRejected(422, "invalid_image", "the image took too long to decode") from exc
        except OSError as exc:
            raise storage_error(exc) from exc
        for step, seconds in processed.timings.items():
            self.metrics.processing.labels(step).observe(seconds)
        blob = BlobInfo(
            sha256=processed.sha256,
            size_bytes=processed.size_bytes,
            mime_type=processed.mime_type,
            width=processed.width,
            height=processed.height,
            storage_key=storage_key(processed.sha256),
        )
        expires_at = (
            datetime.now(UTC) + timedelta(days=self.settings.retention_days)
            if self.settings.retention_days > 0
            else None
        )
        # Publishing and recording must finish (or roll back) together even if the client
        # goes away mid-way; otherwise a cancelled handler could leave a file without a row.
        task = asyncio.ensure_future(
            self._publish_and_record(
                owner_id, blob, processed_path, sanitize_filename(original_filename), message_id, expires_at
            )
        )
        try:
            stored = await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await task
            raise
        self.metrics.upload_size.observe(received.size_bytes)
        self.metrics.uploads.labels("duplicate" if stored.duplicate else "stored").inc()
        if stored.duplicate:
            self.metrics.dedup_hits.inc()
        log.info(
            "image_stored",
            image_id=str(stored.row.id),
            sha256=blob.sha256,
            received_sha256=received.sha256,
            received_bytes=received.size_bytes,
            stored_bytes=blob.size_bytes,
            mime_type=blob.mime_type,
            duplicate=stored.duplicate,
        )
        return stored

    async def _publish_and_record(
        self,
        owner_id: str,
        blob: BlobInfo,
        processed_path: Path,
        original_filename: str | None,
        message_id: uuid.UUID | None,
        expires_at: datetime | None,
    ) -> StoredImage:
        published = False
        try:
            async with self.repository.blob_transaction(blob.sha256) as conn:
                duplicate = await self.repository.upsert_blob(conn, blob)
                if not duplicate or not await self.storage.exists(blob.storage_key):
                    await self.storage.publish(processed_path, blob.storage_key)
                    published = True
                row = await self.repository.insert_image(
                    conn,
                    owner_id=owner_id,
                    sha256=blob.sha256,
                    original_filename=original_filename,
                    message_id=message_id,
                    expires_at=expires_at,
                )
                if message_id is not None:
                    await self.repository.mark_has_images(conn, message_id)
            return StoredImage(row=row, duplicate=duplicate)
        except BaseException:
            if published:
                await self._remove_file_if_unreferenced(blob.sha256, blob.storage_key)
            raise

    async def _remove_file_if_unreferenced(self, sha256: str, key: str) -> None:
        """Delete the bytes after a commit that left no row pointing at them.

        Runs under the blob's lock in a fresh transaction: an upload of the same bytes that ran
        between the commit and now has recorded its row (and found the file present), so the
        check sees it and keeps the file. If this fails, the file is an orphan that integrity
        checks remove after the grace period; a row never points at missing bytes.
        """
        try:
            async with self.repository.blob_transaction(sha256) as conn:
                if not await self.repository.blob_exists(conn, sha256):
                    await self.storage.delete(key)
        except Exception:
            log.exception("orphan_cleanup_failed", sha256=sha256)

    async def _require_owned_message(self, message_id: uuid.UUID, owner_id: str) -> None:
        if not await self.repository.message_owned_by(message_id, owner_id):
            raise BadRequest("message_id does not name a message of yours")

    # ---- reading --------------------------------------------------------------------------

    def image_location(self, image_id: uuid.UUID) -> str:
        """The image's address; absolute when IMAGE_PUBLIC_BASE_URL says where browsers reach us."""
        return f"{self.settings.public_base_url}{self.settings.serve_endpoint}/{image_id}"

    def signed_url(self, image_id: uuid.UUID) -> str:
        expires, signature = self.signer.sign(str(image_id))
        return f"{self.image_location(image_id)}?exp={expires}&sig={signature}"

    async def get(self, image_id: uuid.UUID, owner_id: str) -> ImageRow:
        row = await self.repository.get_image(image_id, owner_id)
        if row is None:
            raise ImageNotFound()
        return row

    async def get_for_serving(self, image_id: uuid.UUID, owner_id: str) -> ImageRow:
        """Like `get`, but the row may come from this replica's cache; the owner check never does."""
        row = await self._serving_row(image_id)
        if row is None or row.owner_id != owner_id:
            raise ImageNotFound()
        return row

    async def get_signed(self, image_id: uuid.UUID, expires: str, signature: str) -> ImageRow:
        """Anyone holding a valid, unexpired signature for this ID may read it."""
        if not self.signer.verify(str(image_id), expires, signature):
            raise ImageNotFound()
        row = await self._serving_row(image_id)
        if row is None:
            raise ImageNotFound()
        return row

    async def _serving_row(self, image_id: uuid.UUID) -> ImageRow | None:
        """A live row from the cache, else from the database (then cached unless invalidated meanwhile)."""
        row = self.row_cache.get(image_id)
        if row is None:
            generation = self.row_cache.generation
            row = await self.repository.get_image(image_id, None)
            if row is not None:
                self.row_cache.put(row, generation)
        return row

    def file_path(self, row: ImageRow) -> Path | None:
        """The local file to send, or None when the backend serves the bytes (object storage)."""
        return self.storage.local_path(row.storage_key)

    async def open_file(self, row: ImageRow, path: Path) -> OpenedFile:
        """The image's file (at `path`, from file_path), open for reading, with its size on disk.

        A row whose file is gone is data loss (a bad restore, a hand-deleted file): the caller
        sees the same 404 as for any missing image, and operators get an error log line and
        `image_store_missing_files_total`, which an alert watches.
        """
        try:
            # On the loop, not in a thread: opening a local file is two metadata system calls
            # (open, fstat), far cheaper than the executor round trip that used to wrap them.
            return _open_for_reading(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            self.metrics.missing_files.inc()
            log.error(
                "image_file_missing",
                image_id=str(row.id),
                sha256=row.sha256,
                storage_key=row.storage_key,
                error=type(exc).__name__,
            )
            raise ImageNotFound() from exc

    async def list(
        self, owner_id: str, *, message_id: uuid.UUID | None, limit: int, cursor: str | None
    ) -> tuple[list[ImageRow], str | None]:
        after = decode_cursor(cursor) if cursor else None
        limit = max(1, min(limit, MAX_PAGE_SIZE))
        rows = await self.repository.list_images(owner_id, message_id=message_id, limit=limit + 1, after=after)
        next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
        return rows[:limit], next_cursor

    async def link(self, image_id: uuid.UUID, owner_id: str, message_id: uuid.UUID | None) -> ImageRow:
        if message_id is not None:
            await self._require_owned_message(message_id, owner_id)
        if not await self.repository.link_message(image_id, owner_id, message_id):
            raise ImageNotFound()
        return await self.get(image_id, owner_id)

    async def delete(self, image_id: uuid.UUID, owner_id: str) -> None:
        sha256 = await self.repository.blob_of(image_id, owner_id)
        if sha256 is None:
            raise ImageNotFound()
        deleted = await self.delete_image_and_maybe_blob(image_id, sha256, owner_id)
        if not deleted:
            raise ImageNotFound()

    async def delete_image_and_maybe_blob(self, image_id: uuid.UUID | None, sha256: str, owner_id: str | None) -> bool:
        """Delete an image row (if given) and, when it was the blob's last user, the blob and its bytes.

        The bytes go only after the rows' deletion has committed (a failed commit must not leave
        a row without bytes), and then only if no upload of the same bytes recorded a new row
        in between: see `_remove_file_if_unreferenced`.
        """
        async with self.repository.blob_transaction(sha256) as conn:
            if image_id is not None:
                found = await self.repository.delete_image_row(conn, image_id, owner_id)
                if found is None:
                    return False
            key = await self.repository.delete_blob_if_unused(conn, sha256)
        # Our own NOTIFY comes back a moment later; a GET right after the DELETE must not wait for it.
        self.row_cache.invalidate(image_id)
        if key is not None:
            await asyncio.shield(self._remove_file_if_unreferenced(sha256, key))
        return True

    async def stats(self) -> StorageStats:
        stats = await self.repository.stats()
        self.metrics.images.set(stats.images)
        self.metrics.blobs.set(stats.blobs)
        self.metrics.stored_bytes.set(stats.bytes)
        return stats


@dataclass(frozen=True, slots=True)
class OpenedFile:
    file: BinaryIO
    size: int


def _open_for_reading(path: Path) -> OpenedFile:
    file = open(path, "rb", buffering=0)  # noqa: SIM115 - the response closes it; unbuffered: sendfile reads the fd
    try:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        return OpenedFile(file, status.st_size)
    except BaseException:
        file.close()
        raise


def encode_cursor(row: ImageRow) -> str:
    """Opaque to clients: the (created_at, id) keyset position, exact to the microsecond."""
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, _, raw_id = raw.partition("|")
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
        return created_at, uuid.UUID(raw_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("cursor is not one this server issued") from exc


@contextlib.contextmanager
def _gauge_inc(gauge: Gauge) -> Iterator[None]:
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()
