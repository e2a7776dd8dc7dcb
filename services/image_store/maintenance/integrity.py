"""Compare the database's blobs with the backend's objects in one ordered pass (a merge join).

Both sides arrive sorted by content hash, page by page: the database by keyset pagination on the
primary key, the backend by its own listing (directory walk or ListObjectsV2). Memory stays at a
page or two whatever the number of blobs; only the problems found are kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

from services.image_store.repository import ImageRepository
from services.image_store.storage.backend import BlobStore, StoredObject, sha256_of_key

PAGE = 1000
T = TypeVar("T")
_EXHAUSTED = "~"  # sorts after every hex digest


@dataclass(frozen=True, slots=True)
class Pair:
    """One position of the join: a row, an object, or both with the same hash."""

    sha256: str
    key: str
    recorded: bool
    stored: StoredObject | None


async def recorded_blobs(repository: ImageRepository) -> AsyncIterator[tuple[str, str]]:
    after = ""
    while True:
        page = await repository.blobs_after(after, PAGE)
        for sha256, key in page:
            if sha256 <= after:
                # The join needs byte order; a database collation that sorts hex otherwise breaks it.
                raise RuntimeError('image_blobs.sha256 does not sort in byte order; use COLLATE "C"')
            after = sha256
            yield sha256, key
        if len(page) < PAGE:
            return


async def _next_or_none(iterator: AsyncIterator[T]) -> T | None:
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return None


async def join(repository: ImageRepository, storage: BlobStore) -> AsyncIterator[Pair]:
    rows = recorded_blobs(repository)
    objects = storage.list_objects()
    row = await _next_or_none(rows)
    stored = await _next_or_none(objects)
    while row is not None or stored is not None:
        row_sha = row[0] if row is not None else _EXHAUSTED
        stored_sha = sha256_of_key(stored.key) if stored is not None else _EXHAUSTED
        if row is not None and row_sha <= stored_sha:
            both = row_sha == stored_sha
            yield Pair(row_sha, row[1], recorded=True, stored=stored if both else None)
            row = await _next_or_none(rows)
            if both:
                stored = await _next_or_none(objects)
        elif stored is not None:
            yield Pair(stored_sha, stored.key, recorded=False, stored=stored)
            stored = await _next_or_none(objects)
