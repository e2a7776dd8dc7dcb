"""Uploads: receive (stream to a temp file, counting) → validate and re-encode in a decode worker
→ publish the file at its content address and record the rows, under the blob's lock.

Temp files never outlive the upload session, whatever fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from prometheus_client import Gauge

from common.errors import ApiError, BadRequest, Busy, InvalidImage, UploadDisabled
from common.rate_limit import RateLimiter
from services.image_store.deletion import BlobRemover
from services.image_store.filenames import sanitize_filename
from services.image_store.imaging.decode_pool import DecodePool, DecoderBusy, DecodeTimeout
from services.image_store.imaging.pipeline import ValidationLimits
from services.image_store.metrics import ImageStoreMetrics
from services.image_store.models import BlobInfo, ImageRow
from services.image_store.repository import ImageRepository
from services.image_store.settings import ImageStoreSettings
from services.image_store.storage.backend import BlobStore, ReceivedFile, storage_key
from services.image_store.storage.filesystem import storage_error

log = structlog.get_logger("retina.image_store")


@dataclass(frozen=True, slots=True)
class StoredImage:
    row: ImageRow
    duplicate: bool


@dataclass(frozen=True, slots=True)
class _NewRow:
    """The image row an upload records, apart from its blob."""

    owner_id: str
    original_filename: str | None
    message_id: uuid.UUID | None
    expires_at: datetime | None


class UploadSession:
    """One upload: receive bytes once, then commit them. Created by ImageService.upload()."""

    def __init__(self, uploads: ImageUploads, owner_id: str, temp_path: Callable[[str], Path]) -> None:
        self._uploads = uploads
        self._owner_id = owner_id
        self._temp_path = temp_path
        self.received: ReceivedFile | None = None

    async def receive(self, chunks: AsyncIterable[bytes]) -> ReceivedFile:
        if self.received is not None:
            raise BadRequest("exactly one file part named 'file' is allowed")
        self.received = await self._uploads.storage.receive(
            chunks, self._temp_path("upload"), max_bytes=self._uploads.settings.max_size_bytes
        )
        return self.received

    async def commit(self, *, original_filename: str | None, message_id: uuid.UUID | None) -> StoredImage:
        if self.received is None:
            raise BadRequest("a file part named 'file' is required")
        return await self._uploads.commit_upload(
            self._owner_id,
            self.received,
            self._temp_path("processed"),
            original_filename=original_filename,
            message_id=message_id,
        )


class ImageUploads:
    def __init__(
        self,
        settings: ImageStoreSettings,
        repository: ImageRepository,
        storage: BlobStore,
        decoder: DecodePool,
        metrics: ImageStoreMetrics,
        remover: BlobRemover,
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.storage = storage
        self.decoder = decoder
        self.metrics = metrics
        self.remover = remover
        self.rate_limiter = RateLimiter(
            settings.upload_rate_per_minute, refusal="too many uploads; try again in {retry_after} s"
        )
        self.limits = ValidationLimits(
            allowed_types=settings.allowed_types,
            max_side_px=settings.max_side_px,
            max_pixels=settings.max_pixels,
            max_frames=settings.max_frames,
            reencode=settings.reencode,
            jpeg_quality=settings.jpeg_quality,
        )

    def check_upload_allowed(self, owner_id: str) -> None:
        if not self.settings.upload_enabled:
            raise UploadDisabled("image uploads are disabled on this server")
        self.rate_limiter.take(owner_id)

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
            await require_owned_message(self.repository, message_id, owner_id)
        blob = await self._process(received.path, processed_path)
        new_row = _NewRow(owner_id, sanitize_filename(original_filename), message_id, self._expires_at())
        stored = await self._publish_and_record_to_the_end(blob, processed_path, new_row)
        self._count_stored(received, blob, stored)
        return stored

    async def _process(self, source: Path, processed_path: Path) -> BlobInfo:
        """Validate and re-encode in a decode worker; describes the blob written to `processed_path`."""
        try:
            with _gauge_inc(self.metrics.decodes_in_flight):
                processed = await self.decoder.process(source, processed_path, self.limits)
        except DecoderBusy as exc:
            raise Busy("the server is busy processing images; retry shortly", retry_after=2) from exc
        except DecodeTimeout as exc:
            raise InvalidImage("the image took too long to decode") from exc
        except OSError as exc:
            raise storage_error(exc) from exc
        for step, seconds in processed.timings.items():
            self.metrics.processing.labels(step).observe(seconds)
        return BlobInfo(
            sha256=processed.sha256,
            size_bytes=processed.size_bytes,
            mime_type=processed.mime_type,
            width=processed.width,
            height=processed.height,
            storage_key=storage_key(processed.sha256),
        )

    def _expires_at(self) -> datetime | None:
        if self.settings.retention_days <= 0:
            return None
        return datetime.now(UTC) + timedelta(days=self.settings.retention_days)

    async def _publish_and_record_to_the_end(
        self, blob: BlobInfo, processed_path: Path, new_row: _NewRow
    ) -> StoredImage:
        # Publishing and recording must finish (or roll back) together even if the client
        # goes away mid-way; otherwise a cancelled handler could leave a file without a row.
        task = asyncio.ensure_future(self._publish_and_record(blob, processed_path, new_row))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await task
            raise

    async def _publish_and_record(self, blob: BlobInfo, processed_path: Path, new_row: _NewRow) -> StoredImage:
        published = False
        try:
            async with self.repository.blob_transaction(blob.sha256) as conn:
                duplicate = await self.repository.upsert_blob(conn, blob)
                if not duplicate or not await self.storage.exists(blob.storage_key):
                    await self.storage.publish(processed_path, blob.storage_key)
                    published = True
                row = await self.repository.insert_image(
                    conn,
                    owner_id=new_row.owner_id,
                    sha256=blob.sha256,
                    original_filename=new_row.original_filename,
                    message_id=new_row.message_id,
                    expires_at=new_row.expires_at,
                )
                if new_row.message_id is not None:
                    await self.repository.mark_has_images(conn, new_row.message_id)
            return StoredImage(row=row, duplicate=duplicate)
        except BaseException:
            if published:
                await self.remover.remove_file_if_unreferenced(blob.sha256, blob.storage_key)
            raise

    def _count_stored(self, received: ReceivedFile, blob: BlobInfo, stored: StoredImage) -> None:
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


async def require_owned_message(repository: ImageRepository, message_id: uuid.UUID, owner_id: str) -> None:
    if not await repository.message_owned_by(message_id, owner_id):
        raise BadRequest("message_id does not name a message of yours")


def _outcome_for(exc: BaseException) -> str:
    return exc.outcome if isinstance(exc, ApiError) else "error"


@contextlib.contextmanager
def _gauge_inc(gauge: Gauge) -> Iterator[None]:
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()
