"""The `messages` array Ollama's /api/chat gets: history, then the new user turn, images inline."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from services.vision_gateway.image_prep import PreparedImage


class HistoryEntry(Protocol):
    """An earlier message: a stored one (StoredMessage) or one the client sent (SentMessage)."""

    @property
    def role(self) -> str: ...
    @property
    def content(self) -> str: ...
    @property
    def image_ids(self) -> list[uuid.UUID]: ...


def build_messages(
    history: Sequence[HistoryEntry],
    past_images: Mapping[uuid.UUID, PreparedImage],
    message: str,
    current_images: Sequence[PreparedImage],
) -> list[dict[str, Any]]:
    """Past images that are gone (deleted, expired) are left out, not an error."""
    messages: list[dict[str, Any]] = []
    for stored in history:
        entry: dict[str, Any] = {"role": stored.role, "content": stored.content}
        images = [past_images[i].base64 for i in stored.image_ids if i in past_images]
        if images:
            entry["images"] = images
        messages.append(entry)
    user_entry: dict[str, Any] = {"role": "user", "content": message}
    if current_images:
        user_entry["images"] = [image.base64 for image in current_images]
    messages.append(user_entry)
    return messages


def image_bytes(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(len(image) for m in messages for image in m.get("images", ()))
