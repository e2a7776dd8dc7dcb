"""The filesystem backend: content-addressed files on disk, `ab/cd/<sha256>` under IMAGE_STORAGE_PATH.

Temp files live in `.tmp/` on the same volume so publishing is an atomic rename. Every write is
fsynced before it becomes visible; nothing here touches the database. The s3 backend uses this
class too, as the local scratch space where uploads are received and re-encoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path

import aiofiles

from common.errors import EmptyUpload, InsufficientStorage, PayloadTooLarge
from services.image_store.storage.backend import ReceivedFile, StoredObject, storage_key

__all__ = ["ImageStorage", "ReceivedFile", "file_sha256", "storage_error", "storage_key"]

TEMP_DIR = ".tmp"
OpTimer = Callable[[str], contextlib.AbstractContextManager[None]]


def _no_timer(operation: str) -> contextlib.AbstractContextManager[None]:
    del operation
    return contextlib.nullcontext()


class ImageStorage:
    """BlobStore on a local (or ReadWriteOnce/ReadWriteMany) file system."""

    name = "filesystem"

    def __init__(self, root: Path, *, timer: OpTimer = _no_timer) -> None:
        self.root = root
        self.temp_root = root / TEMP_DIR
        self._timer = timer

    def ensure_layout(self) -> None:
        self.temp_root.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: str) -> Path:
        return self.root / key

    def local_path(self, key: str) -> Path | None:
        return self.path_for(key)

    async def check_ready(self) -> None:
        if not await self.location_exists():
            raise RuntimeError(f"{self.root} is missing")

    def describe(self) -> str:
        return f"the directory {self.root} (IMAGE_STORAGE_PATH)"

    async def location_exists(self) -> bool:
        return await asyncio.to_thread(self.root.is_dir)

    def new_temp_path(self, purpose: str) -> Path:
        return self.temp_root / f"{purpose}-{uuid.uuid4().hex}"

    @contextlib.asynccontextmanager
    async def temp_paths(self) -> AsyncIterator[Callable[[str], Path]]:
        """Hand out temp paths; every one is removed on exit, whatever happened."""
        issued: list[Path] = []

        def issue(purpose: str) -> Path:
            path = self.new_temp_path(purpose)
            issued.append(path)
            return path

        try:
            yield issue
        finally:
            for path in issued:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    async def receive(self, chunks: AsyncIterable[bytes], dest: Path, *, max_bytes: int) -> ReceivedFile:
        """Stream chunks to `dest` while hashing and counting; stop at max_bytes + 1."""
        digest = hashlib.sha256()
        size = 0
        try:
            with self._timer("write"):
                async with aiofiles.open(dest, "wb") as out:
                    async for chunk in chunks:
                        size += len(chunk)
                        if size > max_bytes:
                            raise PayloadTooLarge(f"the upload exceeds the limit of {max_bytes // (1024 * 1024)} MiB")
                        digest.update(chunk)
                        await out.write(chunk)
        except OSError as exc:
            raise storage_error(exc) from exc
        if size == 0:
            raise EmptyUpload("the upload is empty")
        return ReceivedFile(path=dest, size_bytes=size, sha256=digest.hexdigest())

    async def publish(self, temp: Path, key: str) -> None:
        """Atomically put a complete, fsynced temp file at its content address.

        The temp file stays where it is (a second name for it is renamed into place): an upload
        that a deletion of the same bytes raced publishes it again (uploads.py)."""
        final = self.path_for(key)
        with self._timer("rename"):
            try:
                await asyncio.to_thread(_publish_sync, temp, final)
            except OSError as exc:
                raise storage_error(exc) from exc

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path_for(key).is_file)

    async def discard(self, path: Path) -> None:
        with self._timer("delete"), contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(path.unlink)

    async def delete(self, key: str) -> bool:
        with self._timer("delete"):
            try:
                await asyncio.to_thread(self.path_for(key).unlink)
            except FileNotFoundError:
                return False
        return True

    async def list_objects(self) -> AsyncIterator[StoredObject]:
        """Published files in key order, one `ab/cd` directory at a time (bounded memory); none
        when the root itself is missing (`location_exists` tells that apart from an empty one)."""
        if not await self.location_exists():
            return
        for first in await asyncio.to_thread(_subdirectories, self.root):
            for second in await asyncio.to_thread(_subdirectories, first):
                for item in await asyncio.to_thread(_files_in, second):
                    yield item

    async def sha256_of(self, key: str) -> str | None:
        try:
            return await asyncio.to_thread(file_sha256, self.path_for(key))
        except FileNotFoundError:
            return None

    async def remove_stale_uploads(self, older_than_seconds: float) -> int:
        stale = await asyncio.to_thread(self.stale_temp_files, older_than_seconds)
        for path in stale:
            await self.discard(path)
        return len(stale)

    def stale_temp_files(self, older_than_seconds: float) -> list[Path]:
        if not self.temp_root.is_dir():
            return []  # maintenance from the command line does not create the layout
        cutoff = time.time() - older_than_seconds
        return [p for p in self.temp_root.iterdir() if p.is_file() and p.stat().st_mtime < cutoff]


def _subdirectories(parent: Path) -> list[Path]:
    """The two-hex-digit fan-out directories (the temp directory and strays are skipped)."""
    return sorted(p for p in parent.iterdir() if len(p.name) == 2 and p.name != TEMP_DIR and p.is_dir())


def _files_in(leaf: Path) -> list[StoredObject]:
    found = []
    for item in sorted(leaf.iterdir()):
        with contextlib.suppress(FileNotFoundError):
            stat = item.stat()
            if item.is_file():
                key = f"{leaf.parent.name}/{leaf.name}/{item.name}"
                found.append(StoredObject(key=key, size_bytes=stat.st_size, modified=stat.st_mtime))
    return found


def _publish_sync(temp: Path, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = temp.with_name(f"{temp.name}.publishing-{uuid.uuid4().hex[:8]}")
    try:
        _second_name(temp, staged)
        os.replace(staged, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        raise
    # Make the rename itself durable.
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _second_name(temp: Path, staged: Path) -> None:
    """A hard link; a durable copy on file systems without them (some network shares)."""
    try:
        os.link(temp, staged)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EXDEV):
            raise
        shutil.copyfile(temp, staged)
        with staged.open("rb+") as copy:
            os.fsync(copy.fileno())


def file_sha256(path: Path) -> str:
    """Blocking: hash a stored file (integrity checks run this in a thread)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def storage_error(exc: OSError) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage("the image volume is full")
    return exc
