"""`retina maintenance cleanup|integrity [--repair]`: one run from the command line."""

from __future__ import annotations

import contextlib
import json
import sys

from common.db import open_pool
from common.errors import StorageUnavailable
from common.metrics import new_registry
from common.settings import ImageStoreSettings
from common.signing import UrlSigner
from services.image_store.imaging.decode_pool import DecodePool
from services.image_store.maintenance.jobs import MaintenanceService
from services.image_store.maintenance.migrate_storage import migrate_storage
from services.image_store.metrics import ImageStoreMetrics
from services.image_store.repository import ImageRepository
from services.image_store.service import ImageService
from services.image_store.storage.open import open_blob_store


async def run_maintenance(settings: ImageStoreSettings, task: str, *, repair: bool, verify: bool = True) -> int:
    """Print a JSON report; exit status 1 when integrity problems were found and left unrepaired."""
    try:
        return await _run(settings, task, repair=repair, verify=verify)
    except StorageUnavailable as exc:
        # An unreachable bucket must read as an outage, not as every blob missing.
        print(f"retina maintenance {task}: {exc.message} ({exc.__cause__!r})", file=sys.stderr)
        return 1


async def _run(settings: ImageStoreSettings, task: str, *, repair: bool, verify: bool) -> int:
    if task == "migrate-storage":
        migration = await migrate_storage(settings, verify=verify)
        print(json.dumps({"task": "migrate-storage", **migration.as_dict()}))
        return 1 if migration.problems else 0
    async with (
        open_pool(settings.common.database_url.get_secret_value(), min_size=1, max_size=2) as pool,
        contextlib.AsyncExitStack() as stack,
    ):
        metrics = ImageStoreMetrics(new_registry())
        storage = await stack.enter_async_context(open_blob_store(settings))
        service = ImageService(
            settings,
            ImageRepository(pool),
            storage,
            # Never started: maintenance does not decode images.
            DecodePool(workers=1, timeout_seconds=1, max_pending=1),
            UrlSigner(settings.signing_keys.get_secret_value(), settings.signed_url_ttl_seconds),
            metrics,
        )
        maintenance = MaintenanceService(service)
        if task == "cleanup":
            report = await maintenance.cleanup()
            print(json.dumps({"task": "cleanup", **report.as_dict()}))
            return 0
        integrity = await maintenance.integrity(repair=repair)
        print(json.dumps({"task": "integrity", **integrity.as_dict()}))
        return 1 if integrity.problems and not repair else 0
