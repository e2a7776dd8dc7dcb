"""Images for the model, by ID: fetched from the image-store as the user, prepared, memoised.

Fetching as the user is the access check: someone else's image is a 404 there and here. A
(user, image) -> SHA-256 memo lets a repeated image cost a bodiless conditional GET (304)
instead of a download when its prepared form is still cached.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable

from services.vision_gateway.errors import ImageNotFound
from services.vision_gateway.image_prep import ImagePreparer, PreparedImage
from services.vision_gateway.image_store_client import ImageStoreClient
from services.vision_gateway.metrics import GatewayMetrics

KNOWN_SHA_ENTRIES = 10_000


class ImageSource:
    def __init__(self, store: ImageStoreClient, preparer: ImagePreparer, metrics: GatewayMetrics) -> None:
        self._store = store
        self._preparer = preparer
        self._metrics = metrics
        self._known_sha: OrderedDict[tuple[str, uuid.UUID], str] = OrderedDict()

    async def check_access(self, image_ids: Iterable[uuid.UUID], user_id: str, request_id: str) -> None:
        """404 unless every image is the user's, without downloading any of them."""
        for image_id in dict.fromkeys(image_ids):
            await self._store.check_access(image_id, user_id, request_id)

    async def prepare_all(
        self, image_ids: Iterable[uuid.UUID], user_id: str, request_id: str, *, skip_missing: bool
    ) -> dict[uuid.UUID, PreparedImage]:
        """Each distinct image once, concurrently; missing ones raise unless `skip_missing`."""

        async def one(image_id: uuid.UUID) -> tuple[uuid.UUID, PreparedImage | None]:
            try:
                return image_id, await self.prepare(image_id, user_id, request_id)
            except ImageNotFound:
                if skip_missing:
                    return image_id, None
                raise

        results = await asyncio.gather(*(one(i) for i in dict.fromkeys(image_ids)))
        return {image_id: prepared for image_id, prepared in results if prepared is not None}

    async def prepare(self, image_id: uuid.UUID, user_id: str, request_id: str) -> PreparedImage:
        key = (user_id, image_id)
        known = self._known_sha.get(key)
        if known is not None and self._preparer.cached(known) is None:
            known = None
        started = time.perf_counter()
        fetched = await self._store.fetch(image_id, user_id, request_id, known_sha256=known)
        self._metrics.image_prep.labels("fetch").observe(time.perf_counter() - started)
        if fetched.data is None:  # 304: still the user's and unchanged
            cached = self._preparer.cached(fetched.sha256)
            if cached is not None:
                return cached
            fetched = await self._store.fetch(image_id, user_id, request_id)
        if fetched.data is None:
            raise ImageNotFound(f"image {image_id} not found")
        started = time.perf_counter()
        prepared = await self._preparer.prepare(fetched.sha256, fetched.data)
        self._metrics.image_prep.labels("encode").observe(time.perf_counter() - started)
        self._remember(key, fetched.sha256)
        return prepared

    def _remember(self, key: tuple[str, uuid.UUID], sha256: str) -> None:
        self._known_sha[key] = sha256
        self._known_sha.move_to_end(key)
        while len(self._known_sha) > KNOWN_SHA_ENTRIES:
            self._known_sha.popitem(last=False)
