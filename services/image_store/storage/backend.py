"""The storage backend interface: where the bytes of a content-addressed blob live.

Two implementations: `ImageStorage` (a local file system, the default) and `S3BlobStore`
(S3-compatible object storage). Both receive uploads into local temp files first, because the
decode worker needs a seekable file to validate and re-encode; only publishing, reading,
listing and deleting the finished blob differ. The service calls nothing else, so replicas
sharing one bucket and one database behave exactly like one process on one disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    path: Path
    size_bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One published blob as the backend lists it (key relative to the root or prefix)."""

    key: str
    size_bytes: int
    modified: float  # seconds since the epoch


def storage_key(sha256: str) -> str:
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


def sha256_of_key(key: str) -> str:
    return key.rsplit("/", 1)[-1]


class BlobStore(Protocol):
    """What ImageService and MaintenanceService need from a backend."""

    name: str

    def ensure_layout(self) -> None: ...

    def temp_paths(self) -> contextlib.AbstractAsyncContextManager[Callable[[str], Path]]: ...

    async def receive(self, chunks: AsyncIterable[bytes], dest: Path, *, max_bytes: int) -> ReceivedFile: ...

    async def publish(self, temp: Path, key: str) -> None:
        """Make a complete local file visible at `key`, never replacing different bytes there."""

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> bool:
        """Remove a blob; callers do this only after the database no longer references it."""

    def local_path(self, key: str) -> Path | None:
        """A path to sendfile from, or None when the bytes are not on this machine."""

    def list_objects(self) -> AsyncIterator[StoredObject]:
        """Every published blob in key order, page by page (bounded memory for any count)."""

    async def sha256_of(self, key: str) -> str | None:
        """Hash the stored bytes by streaming them; None when the blob is gone."""

    async def remove_stale_uploads(self, older_than_seconds: float) -> int:
        """Temp files and unfinished uploads left by crashed processes; returns how many went."""

    async def check_ready(self) -> None:
        """Raise when the backend cannot serve (readiness probe)."""

    def describe(self) -> str:
        """Where the blobs live, for messages to an operator, naming the settings that say so."""

    async def location_exists(self) -> bool:
        """Whether the place the blobs live exists (checked, never created: a missing directory
        is a mistyped path or an unmounted volume, not an empty store)."""
