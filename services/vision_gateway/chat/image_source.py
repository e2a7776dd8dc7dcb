"""Images for the model, by ID: access checked per user, fetched and prepared once per content.

Round trips to the image-store cost more CPU than relaying a whole answer, so each ask makes as
few as the access rule allows (issue 17 counts them in test_store_round_trips.py):

- an image this request uploaded: the upload's record is its metadata (no GET /meta);
- an image this user read through the gateway within ACCESS_TTL_SECONDS: no store call at all
  (the link that follows the turn asks the store again, as this user);
- otherwise one GET of the bytes is both the access check (someone else's image is a 404 there)
  and the download; its ETag is the SHA-256 that keys the prepared-image cache.

Fetches share a single flight per (user, image) and encodes one per SHA-256, so forty concurrent
asks about one image download it once per image ID and encode it once. The bytes are reserved in
the prep budget before they are read (from Content-Length) and the decoded pixels before they are
decoded (from the header, read lazily by Pillow), so many large images at once wait or get 503
busy instead of memory.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Iterable, Mapping

from cachetools import TTLCache
from PIL import Image, UnidentifiedImageError

from common.errors import ImageNotFound
from common.singleflight import SingleFlight
from services.vision_gateway.admission import DECODED_BYTES_PER_PIXEL, FILE_COPIES, PrepBudget, prep_cost
from services.vision_gateway.image_prep import ImagePreparer, PreparedImage
from services.vision_gateway.image_store_client import ImageMeta, ImageStoreClient
from services.vision_gateway.metrics import GatewayMetrics

# How long a user's successful read of an image stands in for asking the store again. An image's
# bytes and owner never change; only its deletion is noticed this much later (by the next link).
ACCESS_TTL_SECONDS = 60.0
ACCESS_ENTRIES = 100_000


class ImageSource:
    def __init__(
        self, store: ImageStoreClient, preparer: ImagePreparer, budget: PrepBudget, metrics: GatewayMetrics
    ) -> None:
        self._store = store
        self._preparer = preparer
        self._budget = budget
        self._metrics = metrics
        self._readable: TTLCache[tuple[str, uuid.UUID], ImageMeta] = TTLCache(ACCESS_ENTRIES, ACCESS_TTL_SECONDS)
        self._by_content: SingleFlight[str, PreparedImage] = SingleFlight()
        self._by_image: SingleFlight[tuple[str, uuid.UUID], PreparedImage] = SingleFlight()

    def remember(self, user_id: str, meta: ImageMeta) -> None:
        """The user may read this image (they just uploaded it, or the store just served it to them)."""
        self._readable[(user_id, meta.image_id)] = meta

    async def check_access(self, image_ids: Iterable[uuid.UUID], user_id: str, request_id: str) -> None:
        """404 unless every image is the user's, without downloading any of them."""
        for image_id in dict.fromkeys(image_ids):
            if (user_id, image_id) not in self._readable:
                await self._store.check_access(image_id, user_id, request_id)

    async def prepare_all(
        self,
        image_ids: Iterable[uuid.UUID],
        user_id: str,
        request_id: str,
        *,
        skip_missing: bool,
        known: Mapping[uuid.UUID, ImageMeta] | None = None,
    ) -> dict[uuid.UUID, PreparedImage]:
        """Each distinct image once, concurrently; missing ones raise unless `skip_missing`.
        `known`: records this request already has (its own uploads)."""
        known = known or {}

        async def one(image_id: uuid.UUID) -> tuple[uuid.UUID, PreparedImage | None]:
            try:
                return image_id, await self.prepare(image_id, user_id, request_id, known.get(image_id))
            except ImageNotFound:
                if skip_missing:
                    return image_id, None
                raise

        results = await asyncio.gather(*(one(i) for i in dict.fromkeys(image_ids)))
        return {image_id: prepared for image_id, prepared in results if prepared is not None}

    async def prepare(
        self, image_id: uuid.UUID, user_id: str, request_id: str, known: ImageMeta | None = None
    ) -> PreparedImage:
        meta = known or self._readable.get((user_id, image_id))
        if meta is None:  # the store decides, in the same call that brings the bytes
            return await self._by_image.run((user_id, image_id), lambda: self._read(image_id, user_id, request_id))
        cached = self._preparer.cached(meta.sha256)
        if cached is not None:
            return cached
        return await self._by_content.run(meta.sha256, lambda: self._fetch_known(meta, user_id, request_id))

    async def _fetch_known(self, meta: ImageMeta, user_id: str, request_id: str) -> PreparedImage:
        """Bytes whose size and pixels are known: budgeted before the download."""
        async with self._budget.reserve(prep_cost(meta.size_bytes, meta.width, meta.height)):
            cached = self._preparer.cached(meta.sha256)  # prepared while this flight waited for room
            if cached is not None:
                return cached
            started = time.perf_counter()
            fetched = await self._store.fetch(meta.image_id, user_id, request_id)
            self._metrics.image_prep.labels("fetch").observe(time.perf_counter() - started)
            if fetched.data is None:
                raise ImageNotFound(f"image {meta.image_id} not found")
            return await self._encode(meta.sha256, fetched.data)

    async def _read(self, image_id: uuid.UUID, user_id: str, request_id: str) -> PreparedImage:
        """An image the gateway knows nothing of: one GET checks access and brings the bytes, budgeted
        by their length before they are read and by their pixels before they are decoded."""
        started = time.perf_counter()
        fetched, held = await self._store.fetch_held(
            image_id, user_id, request_id, hold=lambda size: self._budget.hold(FILE_COPIES * size)
        )
        try:
            self._metrics.image_prep.labels("fetch").observe(time.perf_counter() - started)
            width, height = _dimensions(fetched.data)
            self.remember(user_id, ImageMeta(image_id, fetched.sha256, len(fetched.data), width, height))
            cached = self._preparer.cached(fetched.sha256)
            if cached is not None:
                return cached
            sha256, data = fetched.sha256, fetched.data
            return await self._by_content.run(sha256, lambda: self._encode_within(sha256, data, width * height))
        finally:
            held.release()

    async def _encode_within(self, sha256: str, data: bytes, pixels: int) -> PreparedImage:
        async with self._budget.reserve(DECODED_BYTES_PER_PIXEL * pixels):
            return await self._encode(sha256, data)

    async def _encode(self, sha256: str, data: bytes) -> PreparedImage:
        started = time.perf_counter()
        prepared = await self._preparer.prepare(sha256, data)
        self._metrics.image_prep.labels("encode").observe(time.perf_counter() - started)
        return prepared


def _dimensions(data: bytes) -> tuple[int, int]:
    """Width and height from the image's header (Pillow reads it lazily; no pixels are decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        return 0, 0  # the encoder refuses it with its own error; nothing to budget for pixels
