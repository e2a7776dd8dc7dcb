"""Uploads: receive (stream to a temp file, counting) → validate and re-encode in a decode worker
→ write the bytes at their content address → record the rows in one short transaction.

Temp files never outlive the upload session, whatever fails.

The order, and why: no database transaction or pooled connection is held while bytes move to
storage (an S3 PUT may take up to S3_OPERATION_TIMEOUT_SECONDS, and six uploads stuck on a stalled
bucket used to hold the whole pool `idle in transaction`). So an upload
1. reads the blob's state, `before` (is a row recording it; the newest deletion of its bytes and
   whether that deletion may still land); while one may, it waits (polling, bounded) for it;
2. writes the bytes, with no connection held: skipped when a row records the blob and the backend
   has the bytes (a dedup hit), otherwise PUT without overwriting (S3) or rename into place;
3. opens one short transaction holding the blob's lock and reads the state again, `after`:
   - a row records the blob: its bytes are present and stay (a deletion deletes the row before
     the bytes, and the upload that recorded the row wrote them after every earlier deletion had
     settled); the image row is inserted;
   - no row, and the deletion on record is the one `before` saw and is over: nothing can delete
     what step 2 wrote; the blob and image rows are inserted (and the deletion record dropped);
   - no row, and a deletion started since `before` (or is in flight): it may remove what step 2
     wrote. Nothing is recorded; the upload starts again from step 1, a few times at most.
A blob's bytes are therefore deleted only when no row references them, and a concurrent upload of
the same bytes and a delete never lose bytes a row points to (deletion.py has the other half).

An upload that wrote bytes and then recorded nothing (its client went away, the database failed)
removes them in the background by the deletion's own steps. An upload whose S3 PUT failed or ran
out of time removes nothing: if a request the stalled connection still carried lands later, the
object is an orphan without a row, which the integrity check reports once it is older than
IMAGE_ORPHAN_GRACE_SECONDS (`retina maintenance integrity --repair` removes it). With
handler cancellation (how `retina image-store` runs), a client that disconnects cancels its
upload at once, wherever it is: no row is recorded after its client has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from prometheus_client import Gauge

from common.errors import ApiError, BadRequest, Busy, InvalidImage, StorageUnavailable, UploadDisabled
from common.rate_limit import RateLimiter
from common.tracing.spans import traced
from services.image_store.deletion import BlobRemover
from services.image_store.filenames import sanitize_filename
from services.image_store.imaging.decode_pool import DecodePool, DecoderBusy, DecodeTimeout
from services.image_store.imaging.pipeline import ValidationLimits
from services.image_store.imaging.trace_attributes import decode_span_attributes
from services.image_store.metrics import ImageStoreMetrics
from services.image_store.models import BlobInfo, BlobState, ImageRow
from services.image_store.repository import ImageRepository
from services.image_store.settings import ImageStoreSettings
from services.image_store.storage.backend import BlobStore, ReceivedFile, storage_key
from services.image_store.storage.filesystem import storage_error

log = structlog.get_logger("retina.image_store")

# Uploads that find a deletion of the same bytes racing them start again this many times at most.
RECORD_ATTEMPTS = 3
# An upload that took longer than this between reading a blob's state and recording its row starts
# again: deletion records are pruned only far later (deletion.DELETION_RECORDS_KEPT_SECONDS).
STATE_MAX_AGE_SECONDS = 3600.0


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
        stored = await self._publish_and_record(blob, processed_path, new_row)
        self._count_stored(received, blob, stored)
        return stored

    async def _process(self, source: Path, processed_path: Path) -> BlobInfo:
        """Validate and re-encode in a decode worker; describes the blob written to `processed_path`."""
        try:
            with _gauge_inc(self.metrics.decodes_in_flight), traced("image decode") as span:
                processed = await self.decoder.process(source, processed_path, self.limits)
                if span is not None:
                    span.set_attributes(decode_span_attributes(processed))
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

    async def _publish_and_record(self, blob: BlobInfo, processed_path: Path, new_row: _NewRow) -> StoredImage:
        """Steps 1 to 3 of the module docstring, started again when a deletion of the same bytes
        raced this upload."""
        for _ in range(RECORD_ATTEMPTS):
            before = await self._state_without_deletion_in_flight(blob.sha256)
            looked = time.monotonic()
            published = False
            try:
                if not (before.recorded and await self.storage.exists(blob.storage_key)):
                    await self._publish(blob, processed_path)
                    published = True
                stored = await self._record(blob, new_row, before, looked)
            except asyncio.CancelledError:
                if published:  # written, then not recorded: the bytes go again
                    self.remover.discard_unrecorded_bytes_later(blob.sha256, blob.storage_key)
                raise
            except Exception:
                if published:
                    await self.remover.discard_unrecorded_bytes(blob.sha256, blob.storage_key)
                raise
            if stored is not None:
                return stored
            log.info("upload_raced_a_deletion", sha256=blob.sha256)
        raise Busy("the image's bytes are being deleted and stored at the same time; retry shortly", retry_after=1)

    async def _publish(self, blob: BlobInfo, processed_path: Path) -> None:
        """Step 2. A client gone mid-write cancels it; what may have landed goes in the background.
        A write that failed (or ran out of time) is left alone: storage is not answering."""
        try:
            await self.storage.publish(processed_path, blob.storage_key)
        except asyncio.CancelledError:
            self.remover.discard_unrecorded_bytes_later(blob.sha256, blob.storage_key)
            raise

    async def _state_without_deletion_in_flight(self, sha256: str) -> BlobState:
        """Step 1: the blob's state once no deletion of its bytes can still land (bounded wait)."""
        gives_up = time.monotonic() + self.remover.settle_seconds + 1.0
        pause = 0.05
        while True:
            state = await self.repository.blob_state(sha256)
            if not state.deleting:
                return state
            if time.monotonic() + pause > gives_up:
                # The deletion's DELETE neither answered nor lapsed: storage is not answering.
                raise StorageUnavailable()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def _record(self, blob: BlobInfo, new_row: _NewRow, before: BlobState, looked: float) -> StoredImage | None:
        """Step 3: the rows, in one short transaction under the blob's lock; None when a deletion
        of these bytes started since `before` (or `before` is too old to tell)."""
        async with self.repository.blob_transaction(blob.sha256) as conn:
            after = await self.repository.blob_state_locked(conn, blob.sha256)
            if not after.recorded and (
                after.deleting
                or after.deletion_id != before.deletion_id
                or time.monotonic() - looked > STATE_MAX_AGE_SECONDS
            ):
                return None
            duplicate = await self.repository.upsert_blob(conn, blob)
            if not duplicate:
                await self.repository.forget_deletions(conn, blob.sha256)
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
