"""Retention clean-up and integrity checks, run by one replica at a time or from the CLI.

A Postgres advisory lock (session-scoped) elects the replica; the others skip that round.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import structlog

from services.image_store.imaging.decode_pool import DEFAULT_BUDGET_WAIT_SECONDS
from services.image_store.maintenance.integrity import join
from services.image_store.maintenance.repair_guard import DEFAULT_MAX_MISSING_PERCENT, suspicion
from services.image_store.service import ImageService
from services.image_store.settings import ImageStoreSettings
from services.image_store.storage.backend import BlobStore, sha256_of_key

log = structlog.get_logger("retina.image_store.maintenance")

MAINTENANCE_LOCK_ID = 0x7265_7469_6E61  # "retina"
BATCH = 500
# A client may pause this long between body chunks (the temp file is untouched meanwhile).
UPLOAD_PAUSE_ALLOWANCE_SECONDS = 30.0


def live_temp_file_max_idle_seconds(settings: ImageStoreSettings) -> float:
    """The longest a live upload in any replica can leave its temp file unmodified: a pause in
    the body, the budget wait, every decode queued ahead of it, then its own decode."""
    queued_rounds = math.ceil(settings.max_pending_decodes / settings.decode_workers)
    decoding = (queued_rounds + 1) * settings.decode_timeout_seconds
    return UPLOAD_PAUSE_ALLOWANCE_SECONDS + DEFAULT_BUDGET_WAIT_SECONDS + decoding


async def remove_stale_temp_files(storage: BlobStore, older_than_seconds: float) -> int:
    """At start-up: temp files (and, on s3, multipart uploads) a crashed process left behind.

    Only leftovers untouched for longer than a live upload can leave one are removed, so replicas
    sharing a ReadWriteMany volume or a bucket keep theirs; younger ones go in the hourly clean-up.
    """
    removed = await storage.remove_stale_uploads(older_than_seconds)
    if removed:
        log.warning("stale_temp_files_removed", count=removed, older_than_seconds=older_than_seconds)
    return removed


@dataclass
class CleanupReport:
    expired_images: int = 0
    blobs_deleted: int = 0
    files_deleted: int = 0
    stale_temp_files: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class IntegrityReport:
    blobs_checked: int = 0
    files_checked: int = 0
    missing_files: list[str] = field(default_factory=list)
    orphan_files: list[str] = field(default_factory=list)
    checksum_mismatches: list[str] = field(default_factory=list)
    repaired: bool = False
    images_removed: int = 0
    # Why the storage looks wrong rather than damaged (missing, empty, or too many blobs gone);
    # a repair then changes nothing unless forced.
    suspect: str | None = None
    repair_refused: bool = False

    @property
    def problems(self) -> int:
        return len(self.missing_files) + len(self.orphan_files) + len(self.checksum_mismatches)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "problems": self.problems}


class MaintenanceService:
    def __init__(self, service: ImageService) -> None:
        self._service = service
        self._repo = service.repository
        self._storage = service.storage
        self._metrics = service.metrics
        self._grace = service.settings.orphan_grace_seconds

    async def cleanup(self) -> CleanupReport:
        """Expire images past retention, then remove blobs (and files) nothing references."""
        report = CleanupReport()
        while True:
            hashes = await self._repo.delete_expired_images(BATCH)
            report.expired_images += len(hashes)
            if len(hashes) < BATCH:
                break
        for sha256 in await self._repo.unreferenced_blobs(limit=100_000):
            key = await self._remove_blob(sha256)
            if key is not None:
                report.blobs_deleted += 1
                report.files_deleted += 1
        report.stale_temp_files = await self._storage.remove_stale_uploads(max(self._grace, 3600))
        self._metrics.cleanup_deleted.labels("image").inc(report.expired_images)
        self._metrics.cleanup_deleted.labels("blob").inc(report.blobs_deleted)
        self._metrics.cleanup_deleted.labels("file").inc(report.files_deleted + report.stale_temp_files)
        self._metrics.maintenance_success.labels("cleanup").set(time.time())
        await self._service.stats()  # refresh the stored images/blobs/bytes gauges
        log.info("cleanup_finished", **report.as_dict())
        return report

    async def _remove_blob(self, sha256: str) -> str | None:
        deleted = await self._service.delete_image_and_maybe_blob(None, sha256, None)
        return sha256 if deleted else None

    async def integrity(
        self,
        *,
        repair: bool = False,
        verify_checksums: bool = True,
        force: bool = False,
        max_missing_percent: float = DEFAULT_MAX_MISSING_PERCENT,
    ) -> IntegrityReport:
        """Rows without bytes, bytes without rows (older than the grace period), wrong checksums.

        One merge-join pass over both sorted listings, so memory does not grow with the number
        of blobs; works the same on a directory tree and on a bucket.

        A repair first asks whether the storage itself looks wrong (`repair_guard`): a mistyped
        IMAGE_STORAGE_PATH or an unmounted volume lists no blobs, and repairing would delete every
        image. Then it changes nothing (`repair_refused`) unless `force`.
        """
        report = IntegrityReport()
        location_exists = await self._storage.location_exists()
        cutoff = time.time() - self._grace
        async for pair in join(self._repo, self._storage):
            if pair.recorded:
                report.blobs_checked += 1
            if pair.stored is not None:
                report.files_checked += 1
            if pair.recorded and pair.stored is None:
                if await self._really_missing(pair.sha256, pair.key):
                    report.missing_files.append(pair.key)
            elif pair.stored is not None and not pair.recorded:
                if pair.stored.modified < cutoff:
                    report.orphan_files.append(pair.key)
            elif verify_checksums and await self._storage.sha256_of(pair.key) not in (pair.sha256, None):
                report.checksum_mismatches.append(pair.key)
        self._metrics.integrity_problems.labels("missing_file").inc(len(report.missing_files))
        self._metrics.integrity_problems.labels("orphan_file").inc(len(report.orphan_files))
        self._metrics.integrity_problems.labels("checksum_mismatch").inc(len(report.checksum_mismatches))
        report.suspect = self._suspect(report, location_exists=location_exists, max_missing_percent=max_missing_percent)
        if repair and report.suspect is not None and not force:
            report.repair_refused = True  # the caller says so: on stderr (CLI), in the log (run_once)
        elif repair:
            await self._repair(report)
            report.repaired = True
        self._metrics.maintenance_success.labels("integrity").set(time.time())
        log.info("integrity_finished", **{k: v for k, v in report.as_dict().items() if not isinstance(v, list)})
        return report

    def _suspect(self, report: IntegrityReport, *, location_exists: bool, max_missing_percent: float) -> str | None:
        return suspicion(
            self._storage.describe(),
            location_exists=location_exists,
            recorded=report.blobs_checked,
            listed=report.files_checked,
            missing=len(report.missing_files),
            max_missing_percent=max_missing_percent,
        )

    async def _really_missing(self, sha256: str, key: str) -> bool:
        """The listings are not one snapshot: a blob published after its range was listed is fine."""
        return not await self._storage.exists(key) and await self._repo.blob_recorded(sha256)

    async def _repair(self, report: IntegrityReport) -> None:
        """Rows whose bytes are gone or wrong go (their images 404 anyway); orphan files go."""
        # Through the service's deletion steps (deletion.py): no transaction waits on storage, and
        # an upload of the same bytes at the same moment keeps its bytes.
        for key in [*report.missing_files, *report.checksum_mismatches]:
            report.images_removed += await self._service.delete_blob_and_images(
                sha256_of_key(key), key, bytes_present=key in report.checksum_mismatches
            )
        for key in report.orphan_files:
            await self._service.remove_bytes_if_unreferenced(sha256_of_key(key), key)

    async def run_once(self) -> bool:
        """One elected round of clean-up and a quick integrity check; False if another replica ran it.

        The background round never repairs: deleting rows is left to an operator running
        `retina maintenance integrity --repair`. Storage that looks wrong is logged as an error.
        """
        async with self._repo.try_maintenance_lock(MAINTENANCE_LOCK_ID) as elected:
            if not elected:
                return False
            await self.cleanup()
            report = await self.integrity(repair=False, verify_checksums=False)
            if report.suspect is not None:
                log.error(
                    "storage_looks_wrong",
                    reason=report.suspect,
                    storage=self._storage.describe(),
                    missing_files=len(report.missing_files),
                    blobs_checked=report.blobs_checked,
                    action="nothing repaired; the background maintenance never repairs",
                )
            return True
