"""Images for the model, by ID: access checked per user, fetched and prepared once per content.

Every request asks the store for the image's record as its own user (`/meta`: a small JSON
answer; someone else's image is a 404 there and here). The record's SHA-256 keys the
prepared-image cache and a single flight, so forty concurrent asks about the same bytes, by
one user or by many, download and encode them once; its size and pixel count reserve room in
the prep budget before a byte is downloaded.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable

from common.errors import ImageNotFound
from common.singleflight import SingleFlight
from services.vision_gateway.admission import PrepBudget, prep_cost
from services.vision_gateway.image_prep import ImagePreparer, PreparedImage
from services.vision_gateway.image_store_client import ImageMeta, ImageStoreClient
from services.vision_gateway.metrics import GatewayMetrics


class ImageSource:
    def __init__(
        self, store: ImageStoreClient, preparer: ImagePreparer, budget: PrepBudget, metrics: GatewayMetrics
    ) -> None:
        self._store = store
        self._preparer = preparer
        self._budget = budget
        self._metrics = metrics
        self._flights: SingleFlight[str, PreparedImage] = SingleFlight()

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
        meta = await self._store.meta(image_id, user_id, request_id)  # the user's own access check
        cached = self._preparer.cached(meta.sha256)
        if cached is not None:
            return cached
        return await self._flights.run(meta.sha256, lambda: self._fetch_and_prepare(meta, user_id, request_id))

    async def _fetch_and_prepare(self, meta: ImageMeta, user_id: str, request_id: str) -> PreparedImage:
        """One flight per SHA-256: fetched as the user who started it (any caller may read it)."""
        async with self._budget.reserve(prep_cost(meta.size_bytes, meta.width, meta.height)):
            cached = self._preparer.cached(meta.sha256)  # prepared while this flight waited for room
            if cached is not None:
                return cached
            started = time.perf_counter()
            fetched = await self._store.fetch(meta.image_id, user_id, request_id)
            self._metrics.image_prep.labels("fetch").observe(time.perf_counter() - started)
            if fetched.data is None:
                raise ImageNotFound(f"image {meta.image_id} not found")
            started = time.perf_counter()
            prepared = await self._preparer.prepare(meta.sha256, fetched.data)
            self._metrics.image_prep.labels("encode").observe(time.perf_counter() - started)
        return prepared
