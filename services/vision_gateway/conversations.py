"""The user's conversation list and conversation deletion, independent of HTTP.

Listing is newest activity first with an opaque keyset cursor (the last row's activity time and
ID), so pages stay cheap and stable however many conversations come and go between requests; a
conversation that gets new activity while someone pages moves to the top and is not repeated
further down.

Deleting removes the conversation and its messages. Images are *unlinked* by default: the
image-store's rows reference messages with ON DELETE SET NULL, so they stay the user's images
(reachable by ID, expiring under IMAGE_RETENTION_DAYS like any unlinked upload). With
`images=delete` the images the conversation's messages named are deleted from the image-store
as well, as the user (so only the user's own images can go); an image also used elsewhere is
gone there too. Streams still answering in the conversation are stopped.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common.errors import BadRequest, ConversationNotFound
from common.http.paging import CURSOR_NOT_ISSUED
from common.ids import parse_uuid
from services.vision_gateway.image_store_client import ImageStoreClient
from services.vision_gateway.repository import ConversationRepository, ConversationSummary
from services.vision_gateway.streams import StreamRegistry

DEFAULT_PAGE = 20
MAX_PAGE = 100
TITLE_WORDS = 8
TITLE_CHARS = 80
IMAGE_RULES = ("unlink", "delete")


def conversation_title(first_message: str | None) -> str | None:
    """The first words of the first message (None when it had no text, e.g. only images)."""
    words = (first_message or "").split()
    if not words:
        return None
    title = " ".join(words[:TITLE_WORDS])
    shortened = len(words) > TITLE_WORDS
    if len(title) > TITLE_CHARS:
        title, shortened = title[:TITLE_CHARS].rsplit(" ", 1)[0] or title[:TITLE_CHARS], True
    return f"{title}…" if shortened else title


def encode_cursor(summary: ConversationSummary) -> str:
    raw = json.dumps([summary.last_activity_at.isoformat(), str(summary.id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position a cursor names; BadRequest for anything this service did not issue."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        at, raw_id = raw
        position = datetime.fromisoformat(at), parse_uuid(raw_id)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise BadRequest(CURSOR_NOT_ISSUED) from exc
    if position[1] is None or position[0].tzinfo is None:
        raise BadRequest(CURSOR_NOT_ISSUED)
    return position[0], position[1]


@dataclass(frozen=True, slots=True)
class ConversationPage:
    conversations: list[ConversationSummary]
    next_cursor: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "conversations": [
                {
                    "id": str(c.id),
                    "title": conversation_title(c.first_content),
                    "message_count": c.message_count,
                    "has_images": c.has_images,
                    "created_at": c.created_at.isoformat(),
                    "last_activity_at": c.last_activity_at.isoformat(),
                }
                for c in self.conversations
            ],
            "next_cursor": self.next_cursor,
        }


class ConversationService:
    def __init__(self, repository: ConversationRepository, store: ImageStoreClient, registry: StreamRegistry) -> None:
        self._repository = repository
        self._store = store
        self._registry = registry

    async def list(self, owner_id: str, *, limit: int, cursor: str | None) -> ConversationPage:
        after = decode_cursor(cursor) if cursor is not None else None
        rows = await self._repository.list_conversations(owner_id, limit=limit + 1, after=after)
        page = rows[:limit]
        return ConversationPage(page, encode_cursor(page[-1]) if len(rows) > limit else None)

    async def delete(self, conversation_id: uuid.UUID, owner_id: str, *, images: str, request_id: str) -> None:
        deleted = await self._repository.delete_conversation(conversation_id, owner_id)
        if deleted is None:
            raise ConversationNotFound()
        for stream_id in deleted.live_stream_ids:  # their answers have nowhere to go any more
            if not self._registry.stop_local(stream_id):
                await self._repository.notify_stop(stream_id)
        if images == "delete":
            for image_id in deleted.image_ids:
                await self._store.delete(image_id, owner_id, request_id)
