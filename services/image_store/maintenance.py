"""Retention clean-up and integrity checks, run by one replica at a time or from the CLI.

A Postgres advisory lock (session-scoped) elects the replica; the others skip that round.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import structlog

from common.settings import ImageStoreSettings
from services.image_store.decode_pool import DEFAULT_BUDGET_WAIT_SECONDS
from services.image_store.service import ImageService
from services.image_store.storage import ImageStorage, file_sha256

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


async def remove_stale_temp_files(storage: ImageStorage, older_than_seconds: float) -> int:
    """At start-up: temp files a crashed process left behind (a kill -9 skips every cleanup).

    Only files untouched for longer than a live upload can leave one are removed, so replicas
    sharing a ReadWriteMany volume keep theirs; younger leftovers go in the hourly clean-up.
    """
    stale = await asyncio.to_thread(storage.stale_temp_files, older_than_seconds)
    for path in stale:
        await storage.discard(path)
    if stale:
        log.warning("stale_temp_files_removed", count=len(stale), older_than_seconds=older_than_seconds)
    return len(stale)


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
        stale = await asyncio.to_thread(self._storage.stale_temp_files, max(self._grace, 3600))
        for path in stale:
            await self._storage.discard(path)
        report.stale_temp_files = len(stale)
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

    async def integrity(self, *, repair: bool = False, verify_checksums: bool = True) -> IntegrityReport:
        """Rows without files, files without rows (older than the grace period), wrong checksums."""
        report = IntegrityReport(repaired=repair)
        blobs = dict((key, sha) for sha, key in await self._repo.all_blobs())
        files = dict(await asyncio.to_thread(lambda: list(self._storage.iter_stored())))
        report.blobs_checked, report.files_checked = len(blobs), len(files)
        cutoff = time.time() - self._grace
        report.missing_files = sorted(key for key in blobs if key not in files)
        report.orphan_files = sorted(key for key, mtime in files.items() if key not in blobs and mtime < cutoff)
        if verify_checksums:
            for key, sha256 in blobs.items():
                if key in files and not await self._matches(self._storage.path_for(key), sha256):
                    report.checksum_mismatches.append(key)
        self._metrics.integrity_problems.labels("missing_file").inc(len(report.missing_files))
        self._metrics.integrity_problems.labels("orphan_file").inc(len(report.orphan_files))
        self._metrics.integrity_problems.labels("checksum_mismatch").inc(len(report.checksum_mismatches))
        if repair:
            await self._repair(report, blobs)
        self._metrics.maintenance_success.labels("integrity").set(time.time())
        log.info("integrity_finished", **{k: v for k, v in report.as_dict().items() if not isinstance(v, list)})
        return report

    @staticmethod
    async def _matches(path: Path, sha256: str) -> bool:
        try:
            return await asyncio.to_thread(file_sha256, path) == sha256
        except FileNotFoundError:
            return True  # deleted since the listing; not a mismatch

    async def _repair(self, report: IntegrityReport, blobs: dict[str, str]) -> None:
        """Rows whose bytes are gone or wrong go (their images 404 anyway); orphan files go."""
        for key in [*report.missing_files, *report.checksum_mismatches]:
            sha256 = blobs[key]
            async with self._repo.blob_transaction(sha256) as conn:
                report.images_removed += await self._repo.delete_blob_and_images(conn, sha256)
            if key in report.checksum_mismatches:
                await self._storage.delete(key)
        for key in report.orphan_files:
            sha256 = key.rsplit("/", 1)[-1]
            async with self._repo.blob_transaction(sha256) as conn:
                if not await self._repo.blob_exists(conn, sha256):
                    await self._storage.delete(key)

    async def run_once(self) -> bool:
        """One elected round of clean-up and a quick integrity check; False if another replica ran it."""
        async with self._repo.try_maintenance_lock(MAINTENANCE_LOCK_ID) as elected:
            if not elected:
                return False
            await self.cleanup()
            await self.integrity(repair=False, verify_checksums=False)
            return True
