"""Finding and opening stored images: by owner, by signed URL, page by page.

Serving reads may use this replica's row cache; owner checks and listings always ask the
database.
"""

from __future__ import annotations

import base64
import os
import stat
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import structlog

from common.errors import BadRequest, StoredImageNotFound
from common.signing import UrlSigner
from services.image_store.metrics import ImageStoreMetrics
from services.image_store.models import ImageRow
from services.image_store.repository import ImageRepository
from services.image_store.row_cache import ImageRowCache
from services.image_store.settings import ImageStoreSettings
from services.image_store.storage.backend import BlobStore

log = structlog.get_logger("retina.image_store")

MAX_PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class OpenedFile:
    file: BinaryIO
    size: int


class ImageLookup:
    def __init__(
        self,
        settings: ImageStoreSettings,
        repository: ImageRepository,
        storage: BlobStore,
        signer: UrlSigner,
        metrics: ImageStoreMetrics,
        row_cache: ImageRowCache,
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.storage = storage
        self.signer = signer
        self.metrics = metrics
        self.row_cache = row_cache

    def image_location(self, image_id: uuid.UUID) -> str:
        """The image's address; absolute when IMAGE_PUBLIC_BASE_URL says where browsers reach us."""
        return f"{self.settings.public_base_url}{self.settings.serve_endpoint}/{image_id}"

    def signed_url(self, image_id: uuid.UUID) -> str:
        expires, signature = self.signer.sign(str(image_id))
        return f"{self.image_location(image_id)}?exp={expires}&sig={signature}"

    async def get(self, image_id: uuid.UUID, owner_id: str) -> ImageRow:
        row = await self.repository.get_image(image_id, owner_id)
        if row is None:
            raise StoredImageNotFound()
        return row

    async def get_for_serving(self, image_id: uuid.UUID, owner_id: str) -> ImageRow:
        """Like `get`, but the row may come from this replica's cache; the owner check never does."""
        row = await self._serving_row(image_id)
        if row is None or row.owner_id != owner_id:
            raise StoredImageNotFound()
        return row

    async def get_signed(self, image_id: uuid.UUID, expires: str, signature: str) -> ImageRow:
        """Anyone holding a valid, unexpired signature for this ID may read it."""
        if not self.signer.verify(str(image_id), expires, signature):
            raise StoredImageNotFound()
        row = await self._serving_row(image_id)
        if row is None:
            raise StoredImageNotFound()
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
            raise StoredImageNotFound() from exc

    async def list(
        self, owner_id: str, *, message_id: uuid.UUID | None, limit: int, cursor: str | None
    ) -> tuple[list[ImageRow], str | None]:
        after = decode_cursor(cursor) if cursor else None
        limit = max(1, min(limit, MAX_PAGE_SIZE))
        rows = await self.repository.list_images(owner_id, message_id=message_id, limit=limit + 1, after=after)
        next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
        return rows[:limit], next_cursor


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
