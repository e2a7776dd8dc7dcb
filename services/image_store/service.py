"""ImageService: the image-store's behaviour, independent of HTTP.

One object for handlers, the app and maintenance, built from private parts it does not expose:
uploads (receive → validate and re-encode → publish and record, `uploads.py`), lookup (finding,
opening and listing images, `lookup.py`) and the remover (deleting images and, with their last
user, blobs, `deletion.py`).
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

from common.errors import StoredImageNotFound
from common.signing import UrlSigner
from services.image_store.deletion import BlobRemover
from services.image_store.imaging.decode_pool import DecodePool
from services.image_store.lookup import ImageLookup, OpenedFile
from services.image_store.metrics import ImageStoreMetrics
from services.image_store.models import ImageRow, StorageStats
from services.image_store.repository import ImageRepository
from services.image_store.row_cache import ImageRowCache
from services.image_store.settings import ImageStoreSettings
from services.image_store.storage.backend import BlobStore
from services.image_store.uploads import ImageUploads, UploadSession, require_owned_message


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
        # A deletion's DELETE gives up after one S3 deadline; the second covers a request in transit.
        self._remover = BlobRemover(
            repository, storage, self.row_cache, settle_seconds=2 * settings.s3_operation_timeout_seconds
        )
        self._uploads = ImageUploads(settings, repository, storage, decoder, metrics, self._remover)
        self._lookup = ImageLookup(settings, repository, storage, signer, metrics, self.row_cache)

    # ---- uploads --------------------------------------------------------------------------

    def upload(self, owner_id: str) -> contextlib.AbstractAsyncContextManager[UploadSession]:
        """An upload session; its temp files are removed on exit and its outcome is counted."""
        return self._uploads.upload(owner_id)

    # ---- reading --------------------------------------------------------------------------

    def image_location(self, image_id: uuid.UUID) -> str:
        return self._lookup.image_location(image_id)

    def signed_url(self, image_id: uuid.UUID) -> str:
        return self._lookup.signed_url(image_id)

    async def get(self, image_id: uuid.UUID, owner_id: str) -> ImageRow:
        return await self._lookup.get(image_id, owner_id)

    async def get_for_serving(self, image_id: uuid.UUID, owner_id: str) -> ImageRow:
        return await self._lookup.get_for_serving(image_id, owner_id)

    async def get_signed(self, image_id: uuid.UUID, expires: str, signature: str) -> ImageRow:
        return await self._lookup.get_signed(image_id, expires, signature)

    def file_path(self, row: ImageRow) -> Path | None:
        return self._lookup.file_path(row)

    async def open_file(self, row: ImageRow, path: Path) -> OpenedFile:
        return await self._lookup.open_file(row, path)

    async def list(
        self, owner_id: str, *, message_id: uuid.UUID | None, limit: int, cursor: str | None
    ) -> tuple[list[ImageRow], str | None]:
        return await self._lookup.list(owner_id, message_id=message_id, limit=limit, cursor=cursor)

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
        deleted = await self._remover.delete_image_and_maybe_blob(image_id, sha256, owner_id)
        if not deleted:
            raise StoredImageNotFound()

    async def delete_image_and_maybe_blob(self, image_id: uuid.UUID | None, sha256: str, owner_id: str | None) -> bool:
        """See BlobRemover.delete_image_and_maybe_blob (retention clean-up calls it here)."""
        return await self._remover.delete_image_and_maybe_blob(image_id, sha256, owner_id)

    async def delete_blob_and_images(self, sha256: str, key: str, *, bytes_present: bool) -> int:
        """See BlobRemover.delete_blob_and_images (integrity repair calls it here)."""
        return await self._remover.delete_blob_and_images(sha256, key, bytes_present=bytes_present)

    async def remove_bytes_if_unreferenced(self, sha256: str, key: str) -> bool:
        """See BlobRemover.remove_bytes_if_unreferenced (integrity repair of orphans calls it here)."""
        return await self._remover.remove_bytes_if_unreferenced(sha256, key)

    async def close(self) -> None:
        """At shutdown: background removals of bytes an upload wrote and did not record finish."""
        await self._remover.close()
