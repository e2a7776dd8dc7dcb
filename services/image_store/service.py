"""ImageService: the image-store's behaviour, independent of HTTP.

A façade over its parts, so handlers, the app and maintenance depend on one object:
`uploads` (receive → validate and re-encode → publish and record), `lookup` (finding, opening
and listing images) and `remover` (deleting images and, with their last user, blobs).
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

from common.errors import StoredImageNotFound
from common.settings import ImageStoreSettings
from common.signing import UrlSigner
from services.image_store.deletion import BlobRemover
from services.image_store.imaging.decode_pool import DecodePool
from services.image_store.lookup import MAX_PAGE_SIZE, ImageLookup, OpenedFile
from services.image_store.metrics import ImageStoreMetrics
from services.image_store.models import ImageRow, StorageStats
from services.image_store.repository import ImageRepository
from services.image_store.row_cache import ImageRowCache
from services.image_store.storage.backend import BlobStore
from services.image_store.uploads import ImageUploads, UploadSession, require_owned_message

# Handlers import these from here: the service module is the image-store's one entry point.
__all__ = ["MAX_PAGE_SIZE", "ImageService", "UploadSession"]


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
        self.remover = BlobRemover(repository, storage, self.row_cache)
        self.uploads = ImageUploads(settings, repository, storage, decoder, metrics, self.remover)
        self.lookup = ImageLookup(settings, repository, storage, signer, metrics, self.row_cache)
        self.rate_limiter = self.uploads.rate_limiter
        self.limits = self.uploads.limits

    # ---- uploads --------------------------------------------------------------------------

    def upload(self, owner_id: str) -> contextlib.AbstractAsyncContextManager[UploadSession]:
        """An upload session; its temp files are removed on exit and its outcome is counted."""
        return self.uploads.upload(owner_id)

    # ---- reading --------------------------------------------------------------------------

    def image_location(self, image_id: uuid.UUID) -> str:
        return self.lookup.image_location(image_id)

    def signed_url(self, image_id: uuid.UUID) -> str:
        return self.lookup.signed_url(image_id)

    async def get(self, image_id: uuid.UUID, owner_id: str) -> ImageRow:
        return await self.lookup.get(image_id, owner_id)

    async def get_for_serving(self, image_id: uuid.UUID, owner_id: str) -> ImageRow:
        return await self.lookup.get_for_serving(image_id, owner_id)

    async def get_signed(self, image_id: uuid.UUID, expires: str, signature: str) -> ImageRow:
        return await self.lookup.get_signed(image_id, expires, signature)

    def file_path(self, row: ImageRow) -> Path | None:
        return self.lookup.file_path(row)

    async def open_file(self, row: ImageRow, path: Path) -> OpenedFile:
        return await self.lookup.open_file(row, path)

    async def list(
        self, owner_id: str, *, message_id: uuid.UUID | None, limit: int, cursor: str | None
    ) -> tuple[list[ImageRow], str | None]:
        return await self.lookup.list(owner_id, message_id=message_id, limit=limit, cursor=cursor)

    async def stats(self) -> StorageStats:
        stats = await self.repository.stats()
        self.metrics.images.set(stats.images)
        self.metrics.blobs.set(stats.blobs)
        self.metrics.stored_bytes.set(stats.bytes)
        return stats

    # ---- changing ---------------------------------------------------------------------------

    async def link(self, image_id: uuid.UUID, owner_id: str, message_id: uuid.UUID | None) -> ImageRow:
        if message_id is not None:
            await require_owned_message(self.repository, message_id, owner_id)
        if not await self.repository.link_message(image_id, owner_id, message_id):
            raise StoredImageNotFound()
        return await self.get(image_id, owner_id)

    async def delete(self, image_id: uuid.UUID, owner_id: str) -> None:
        sha256 = await self.repository.blob_of(image_id, owner_id)
        if sha256 is None:
            raise StoredImageNotFound()
        deleted = await self.remover.delete_image_and_maybe_blob(image_id, sha256, owner_id)
        if not deleted:
            raise StoredImageNotFound()

    async def delete_image_and_maybe_blob(self, image_id: uuid.UUID | None, sha256: str, owner_id: str | None) -> bool:
        """See BlobRemover.delete_image_and_maybe_blob (retention clean-up calls it here)."""
        return await self.remover.delete_image_and_maybe_blob(image_id, sha256, owner_id)
