"""Deleting images and their blobs: the bytes go only once no row can point at them.

Shared by user deletes, retention clean-up (MaintenanceService) and an upload that failed after
publishing its file.
"""

from __future__ import annotations

import asyncio
import uuid

import structlog

from services.image_store.repository import ImageRepository
from services.image_store.row_cache import ImageRowCache
from services.image_store.storage.backend import BlobStore

log = structlog.get_logger("retina.image_store")


class BlobRemover:
    def __init__(self, repository: ImageRepository, storage: BlobStore, row_cache: ImageRowCache) -> None:
        self.repository = repository
        self.storage = storage
        self.row_cache = row_cache

    async def delete_image_and_maybe_blob(self, image_id: uuid.UUID | None, sha256: str, owner_id: str | None) -> bool:
        """Delete an image row (if given) and, when it was the blob's last user, the blob and its bytes.

        The bytes go only after the rows' deletion has committed (a failed commit must not leave
        a row without bytes), and then only if no upload of the same bytes recorded a new row
        in between: see `remove_file_if_unreferenced`.
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
            await asyncio.shield(self.remove_file_if_unreferenced(sha256, key))
        return True

    async def remove_file_if_unreferenced(self, sha256: str, key: str) -> None:
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
