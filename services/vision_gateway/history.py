"""Image links for the conversation history, so a browser can show the images it sent.

The gateway's messages hold image IDs only; a browser cannot use an ID (the store wants a token).
The image-store already signs a URL for every image in its metadata answer, so the gateway asks it
for each image's metadata on behalf of the caller: the store's ownership check applies, the signing
key stays with the store alone, and the URL is absolute when the store has IMAGE_PUBLIC_BASE_URL.
An image the store no longer has (expired, deleted), or cannot answer for right now, gets
`"url": null` instead of failing the whole history.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import structlog

from common.errors import ApiError
from services.vision_gateway.image_store_client import ImageStoreClient
from services.vision_gateway.repository import StoredMessage

log = structlog.get_logger("retina.gateway.history")

# Metadata look-ups in flight at once for one history answer.
LOOKUP_CONCURRENCY = 8


class HistoryImages:
    def __init__(self, store: ImageStoreClient, *, concurrency: int = LOOKUP_CONCURRENCY) -> None:
        self._store = store
        self._concurrency = concurrency

    async def urls(
        self, messages: list[StoredMessage], user_id: str, request_id: str = ""
    ) -> dict[uuid.UUID, str | None]:
        """Signed URL (or None) for every image the messages mention, looked up concurrently."""
        image_ids = list(dict.fromkeys(i for message in messages for i in message.image_ids))
        gate = asyncio.Semaphore(self._concurrency)

        async def one(image_id: uuid.UUID) -> str | None:
            async with gate:
                try:
                    return await self._store.signed_url(image_id, user_id, request_id)
                except ApiError as exc:
                    log.warning("history_image_url_failed", image_id=str(image_id), error=exc.message)
                    return None

        found = await asyncio.gather(*(one(i) for i in image_ids))
        return dict(zip(image_ids, found, strict=True))


def message_with_images(message: StoredMessage, urls: dict[uuid.UUID, str | None]) -> dict[str, Any]:
    """The stored message as JSON plus `images: [{"id", "url"}]` in the order they were sent."""
    body = message.to_json()
    body["images"] = [{"id": str(i), "url": urls.get(i)} for i in message.image_ids]
    return body
