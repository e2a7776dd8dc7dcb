"""`retina maintenance cleanup|integrity [--repair [--force] [--max-missing-percent N]]`: one run
from the command line.

Nothing here creates IMAGE_STORAGE_PATH (the settings are loaded with `directories_untouched`
and the store is opened without its layout): a mistyped or unmounted path must stay missing, so
that integrity reports it and a repair refuses, instead of finding an empty store.
"""

from __future__ import annotations

import contextlib
import json
import sys

from common.db import open_pool
from common.errors import StorageUnavailable
from common.metrics import new_registry
from common.signing import UrlSigner
from services.image_store.imaging.decode_pool import DecodePool
from services.image_store.maintenance.jobs import IntegrityReport, MaintenanceService
from services.image_store.maintenance.migrate_storage import migrate_storage
from services.image_store.maintenance.repair_guard import DEFAULT_MAX_MISSING_PERCENT
from services.image_store.metrics import ImageStoreMetrics
from services.image_store.repository import ImageRepository
from services.image_store.service import ImageService
from services.image_store.settings import ImageStoreSettings
from services.image_store.storage.open import open_blob_store

# Exit status of `integrity --repair` when the storage looks wrong and nothing was changed.
REPAIR_REFUSED = 3


async def run_maintenance(
    settings: ImageStoreSettings,
    task: str,
    *,
    repair: bool,
    verify: bool = True,
    force: bool = False,
    max_missing_percent: float = DEFAULT_MAX_MISSING_PERCENT,
) -> int:
    """Print a JSON report; exit status 1 when integrity problems were found and left unrepaired,
    3 when a repair was refused because the storage looks wrong (nothing changed)."""
    try:
        return await _run(
            settings, task, repair=repair, verify=verify, force=force, max_missing_percent=max_missing_percent
        )
    except StorageUnavailable as exc:
        # An unreachable bucket must read as an outage, not as every blob missing.
        print(f"retina maintenance {task}: {exc.message} ({exc.__cause__!r})", file=sys.stderr)
        return 1


async def _run(
    settings: ImageStoreSettings, task: str, *, repair: bool, verify: bool, force: bool, max_missing_percent: float
) -> int:
    if task == "migrate-storage":
        migration = await migrate_storage(settings, verify=verify)
        print(json.dumps({"task": "migrate-storage", **migration.as_dict()}))
        return 1 if migration.problems else 0
    async with (
        # Straight to PostgreSQL when DATABASE_DIRECT_URL is set (always, behind a transaction pooler):
        # a one-off run needs no pooler.
        open_pool(settings.common.direct_url, min_size=1, max_size=2) as pool,
        contextlib.AsyncExitStack() as stack,
    ):
        metrics = ImageStoreMetrics(new_registry())
        storage = await stack.enter_async_context(open_blob_store(settings, create_layout=False))
        service = ImageService(
            settings,
            ImageRepository(pool),  # already direct when DATABASE_DIRECT_URL is set
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
        integrity = await maintenance.integrity(repair=repair, force=force, max_missing_percent=max_missing_percent)
        print(json.dumps({"task": "integrity", **integrity.as_dict()}))
        _explain(integrity, repair=repair)
        if integrity.repair_refused:
            return REPAIR_REFUSED
        return 1 if integrity.problems and not repair else 0


def _explain(report: IntegrityReport, *, repair: bool) -> None:
    """Say on stderr why the storage looks wrong, and what a repair does (or did not do) about it."""
    if report.suspect is None:
        return
    if report.repair_refused:
        print(
            f"retina maintenance integrity: repair refused, nothing was changed: {report.suspect}\n"
            "  Check IMAGE_STORAGE_PATH and its volume (or S3_BUCKET and S3_PREFIX). If the blobs are "
            "really gone, run again with --force to remove their rows and images "
            "(or raise --max-missing-percent).",
            file=sys.stderr,
        )
    elif repair:
        print(f"retina maintenance integrity: repaired with --force although {report.suspect}", file=sys.stderr)
    else:
        print(
            f"retina maintenance integrity: warning: {report.suspect}\n"
            "  --repair would refuse to change anything unless given --force.",
            file=sys.stderr,
        )
