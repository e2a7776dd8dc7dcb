"""`retina maintenance migrate-storage`: copy blobs from the volume (IMAGE_STORAGE_PATH) to the bucket.

Safe to run while the filesystem-backed image-store still serves, and to run again: an object
already in the bucket with the right length is skipped (that is how it resumes after an
interruption). Every copy is published like an upload (server-checked SHA-256 and MD5, no
overwrite) and, unless --no-verify, read back and hashed. A source file whose bytes do not hash
to its name is reported and not copied.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field

import structlog

from services.image_store.settings import ImageStoreSettings
from services.image_store.storage.backend import StoredObject, sha256_of_key
from services.image_store.storage.filesystem import ImageStorage, file_sha256
from services.image_store.storage.s3 import S3BlobStore
from services.image_store.storage.s3_client import s3_client

log = structlog.get_logger("retina.image_store.migrate")

WORKERS = 4


@dataclass
class MigrationReport:
    copied: int = 0
    skipped_existing: int = 0
    bytes_copied: int = 0
    verified: int = 0
    source_corrupt: list[str] = field(default_factory=list)
    verify_failed: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        return len(self.source_corrupt) + len(self.verify_failed)

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "problems": self.problems}


class StorageMigration:
    def __init__(self, source: ImageStorage, destination: S3BlobStore, *, verify: bool) -> None:
        self._source = source
        self._destination = destination
        self._verify = verify
        self.report = MigrationReport()

    async def run(self) -> MigrationReport:
        """A few copies at a time; the queue bounds how much of the listing is held in memory."""
        queue: asyncio.Queue[StoredObject | None] = asyncio.Queue(maxsize=WORKERS * 4)
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(WORKERS)]
        try:
            async for item in self._source.list_objects():
                await queue.put(item)
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
        return self.report

    async def _worker(self, queue: asyncio.Queue[StoredObject | None]) -> None:
        while (item := await queue.get()) is not None:
            await self._copy(item)

    async def _copy(self, item: StoredObject) -> None:
        if await self._destination.size_of(item.key) == item.size_bytes:
            self.report.skipped_existing += 1
            return
        path = self._source.path_for(item.key)
        expected = sha256_of_key(item.key)
        if await asyncio.to_thread(file_sha256, path) != expected:
            log.error("migrate_source_corrupt", key=item.key)
            self.report.source_corrupt.append(item.key)
            return
        await self._destination.publish(path, item.key)
        self.report.copied += 1
        self.report.bytes_copied += item.size_bytes
        if not self._verify:
            return
        if await self._destination.sha256_of(item.key) == expected:
            self.report.verified += 1
        else:
            # A wrong object must not stay: the next run copies it again.
            await self._destination.delete(item.key)
            log.error("migrate_verify_failed", key=item.key)
            self.report.verify_failed.append(item.key)


async def migrate_storage(settings: ImageStoreSettings, *, verify: bool) -> MigrationReport:
    if not settings.s3.bucket:
        raise SystemExit("retina maintenance migrate-storage: set S3_BUCKET (and S3_ENDPOINT_URL etc.)")
    source = ImageStorage(settings.storage_path)
    if not await source.location_exists():  # not created by `retina maintenance`: say so, copy nothing
        raise SystemExit(f"retina maintenance migrate-storage: {source.describe()} does not exist")
    async with s3_client(settings.s3) as client:
        destination = S3BlobStore(client, settings.s3, source)
        await destination.check_ready()
        report = await StorageMigration(source, destination, verify=verify).run()
    for key in (*report.source_corrupt, *report.verify_failed):
        print(f"problem: {key}", flush=True)
    return report
