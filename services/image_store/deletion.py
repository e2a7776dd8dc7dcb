"""Deleting images and their blobs: the bytes go only once no row can point at them.

Shared by user deletes, retention clean-up and integrity repair (MaintenanceService), and an
upload that wrote bytes it then did not record.

A deletion of a blob's bytes runs in three steps, and no database connection waits on storage:
1. One short transaction holding the blob's lock removes the rows (the image, and the blob row
   if no other image uses it) and records the deletion in `image_blob_deletions`: a new ID, and a
   time after which its DELETE can no longer land (`settle_seconds`, twice the S3 call deadline:
   the call gives up after one, the other covers a request already on its way).
2. Then, with no transaction and no connection held, the DELETE on the backend.
3. When it answered, the record says so (`in_flight_until` = NULL) at once; when it failed, the
   record lapses at its time and the bytes are an orphan, which the integrity check reports once
   older than IMAGE_ORPHAN_GRACE_SECONDS (and `--repair` removes, by these same steps).

An upload of the same bytes reads that record before writing and again, under the blob's lock,
before recording its row; it records nothing while a deletion is in flight or if one started
in between (uploads.py). So concurrent same-bytes upload and delete never lose bytes that a row
points to, though neither holds a lock while storage works.
"""

from __future__ import annotations

import asyncio
import uuid

import structlog

from common.db import Connection
from services.image_store.repository import ImageRepository
from services.image_store.row_cache import ImageRowCache
from services.image_store.storage.backend import BlobStore

log = structlog.get_logger("retina.image_store")

# Settled deletion records older than this are pruned, a few with each new deletion. An upload
# that has been looking at the records for longer starts over (uploads.STATE_MAX_AGE_SECONDS).
DELETION_RECORDS_KEPT_SECONDS = 86400.0
PRUNE_BATCH = 20
# At shutdown, background removals get this long to finish before they are cancelled.
CLOSE_WAIT_SECONDS = 5.0


class BlobRemover:
    def __init__(
        self, repository: ImageRepository, storage: BlobStore, row_cache: ImageRowCache, *, settle_seconds: float
    ) -> None:
        self.repository = repository
        self.storage = storage
        self.row_cache = row_cache
        self.settle_seconds = settle_seconds
        self._background: set[asyncio.Task[None]] = set()

    async def delete_image_and_maybe_blob(self, image_id: uuid.UUID | None, sha256: str, owner_id: str | None) -> bool:
        """Delete an image row (if given) and, when it was the blob's last user, the blob and its bytes.

        The bytes go only after the rows' deletion has committed (a failed commit must not leave
        a row without bytes), and the caller's going away does not stop them going.
        """
        async with self.repository.blob_transaction(sha256) as conn:
            if image_id is not None:
                found = await self.repository.delete_image_row(conn, image_id, owner_id)
                if found is None:
                    return False
            key = await self.repository.delete_blob_if_unused(conn, sha256)
            deletion_id = await self._start(conn, sha256) if key is not None else None
        # Our own NOTIFY comes back a moment later; a GET right after the DELETE must not wait for it.
        self.row_cache.invalidate(image_id)
        if key is not None and deletion_id is not None:
            await asyncio.shield(self._delete_bytes(sha256, key, deletion_id))
        return True

    async def delete_blob_and_images(self, sha256: str, key: str, *, bytes_present: bool) -> int:
        """Integrity repair: a blob whose bytes are wrong (or gone) takes its images with it.

        Returns how many images went. Bytes still present are deleted by the three steps.
        """
        async with self.repository.blob_transaction(sha256) as conn:
            removed = await self.repository.delete_blob_and_images(conn, sha256)
            deletion_id = await self._start(conn, sha256) if bytes_present else None
        if deletion_id is not None:
            await asyncio.shield(self._delete_bytes(sha256, key, deletion_id))
        return removed

    async def remove_bytes_if_unreferenced(self, sha256: str, key: str) -> bool:
        """Delete bytes no blob row records (an orphan; an upload that did not record its row).

        Returns False, deleting nothing, when a row records them after all.
        """
        async with self.repository.blob_transaction(sha256) as conn:
            if await self.repository.blob_exists(conn, sha256):
                return False
            deletion_id = await self._start(conn, sha256)
        await asyncio.shield(self._delete_bytes(sha256, key, deletion_id))
        return True

    async def discard_unrecorded_bytes(self, sha256: str, key: str) -> None:
        """For an upload that wrote bytes and then failed to record them: `remove_bytes_if_unreferenced`,
        and a failure here is logged (an orphan), not raised over the upload's own error."""
        try:
            await asyncio.shield(self.remove_bytes_if_unreferenced(sha256, key))
        except Exception:
            log.exception("orphan_cleanup_failed", sha256=sha256)

    def discard_unrecorded_bytes_later(self, sha256: str, key: str) -> None:
        """The same in the background, for an upload being cancelled (its client went away)."""
        task = asyncio.ensure_future(self.discard_unrecorded_bytes(sha256, key))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Let background removals finish (each is bounded by the storage deadline), then cancel."""
        if not self._background:
            return
        _, pending = await asyncio.wait(set(self._background), timeout=CLOSE_WAIT_SECONDS)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _start(self, conn: Connection, sha256: str) -> int:
        """Step 1's record, in the caller's transaction; a few old settled records go with it."""
        await self.repository.prune_deletions(conn, DELETION_RECORDS_KEPT_SECONDS, PRUNE_BATCH)
        return await self.repository.start_deletion(conn, sha256, self.settle_seconds)

    async def _delete_bytes(self, sha256: str, key: str, deletion_id: int) -> None:
        """Step 2 and 3. A failure leaves an orphan, never a row without bytes: logged, not raised."""
        try:
            await self.storage.delete(key)
        except Exception:
            log.exception("orphan_cleanup_failed", sha256=sha256, storage_key=key)
            return
        try:
            await self.repository.finish_deletion(sha256, deletion_id)
        except Exception:
            # Uploads of these bytes wait until the record lapses (settle_seconds) instead.
            log.exception("blob_deletion_not_recorded_as_finished", sha256=sha256)
