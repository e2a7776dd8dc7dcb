"""Pick the storage backend IMAGE_STORAGE_BACKEND names; used by the app and the CLI alike."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from services.image_store.settings import ImageStoreSettings
from services.image_store.storage.backend import BlobStore
from services.image_store.storage.filesystem import ImageStorage, OpTimer, _no_timer
from services.image_store.storage.s3 import S3BlobStore
from services.image_store.storage.s3_client import s3_client


@contextlib.asynccontextmanager
async def open_blob_store(
    settings: ImageStoreSettings, *, timer: OpTimer = _no_timer, create_layout: bool = True
) -> AsyncIterator[BlobStore]:
    """IMAGE_STORAGE_PATH is the store itself (filesystem) or the local scratch space (s3).

    The service creates it (and its temp directory); `retina maintenance` passes
    `create_layout=False`, since it only reads and deletes, and must see a missing path as missing.
    """
    scratch = ImageStorage(settings.storage_path, timer=timer)
    if create_layout:
        scratch.ensure_layout()
    if settings.storage_backend == "filesystem":
        yield scratch
        return
    async with s3_client(settings.s3) as client:
        yield S3BlobStore(client, settings.s3, scratch, timer=timer)
