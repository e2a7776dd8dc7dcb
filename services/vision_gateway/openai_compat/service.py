"""The OpenAI adapter's use case: a parsed completion request becomes an ordinary chat turn.

Images sent as data: URLs go through the image-store first (ChatService.upload_image), so they
are validated, re-encoded, stripped of metadata and owned by the user exactly like a multipart
upload; `retina:<image-id>` references are used as they are, and the store's ownership check
applies to both. From then on the turn is prepared, begun and relayed by ChatService unchanged.

Recording (stateless clients send the whole history every time): each call is recorded as a new
conversation holding the last user message (with its images) and the answer. The earlier
messages reach the model but are not stored again; images uploaded only for them are deleted
once the model's prompt holds them, so repeating a history never piles up copies in the store.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from services.vision_gateway.chat import ChatRequest, ChatService, OpenTurn, SentMessage
from services.vision_gateway.openai_compat.request import CompletionRequest, ImagePart, ParsedMessage

UPLOAD_CHUNK = 256 * 1024


@dataclass
class _Uploads:
    """Images this request put into the store, by purpose, so a refusal can take them back."""

    current: list[uuid.UUID]
    history_only: list[uuid.UUID]

    @property
    def all(self) -> list[uuid.UUID]:
        return [*self.current, *self.history_only]


class CompletionService:
    def __init__(self, chat: ChatService) -> None:
        self.chat = chat

    async def begin(
        self, request: CompletionRequest, *, user_id: str, request_id: str, grace_seconds: float
    ) -> OpenTurn:
        """Upload, prepare and begin the turn; on any refusal nothing of it stays in the store."""
        uploads = _Uploads([], [])
        try:
            current = [await self._image_id(p, user_id, request_id, uploads.current) for p in request.last.images]
            history = [await self._sent(m, user_id, request_id, uploads.history_only) for m in self._kept(request)]
            chat_request = ChatRequest(
                user_id=user_id,
                message=request.last.text,
                model=request.model,
                conversation_id=None,
                image_ids=current,
                options=request.options,
                request_id=request_id,
                history=tuple(history),
                format=request.format,
                think=request.think,
            )
            prepared = await self.chat.prepare(chat_request)
            turn = await self.chat.begin(prepared, grace_seconds=grace_seconds)
        except BaseException:
            await self.chat.discard_uploads(uploads.all, user_id, request_id)
            raise
        try:  # the prompt holds the history images now; their copies in the store served only this call
            await self.chat.discard_uploads(uploads.history_only, user_id, request_id)
        except BaseException:
            await self.chat.abandon(turn)
            raise
        return turn

    def _kept(self, request: CompletionRequest) -> list[ParsedMessage]:
        """System messages and the newest VISION_HISTORY_MESSAGES others, in their order."""
        limit = self.chat.settings.history_messages
        others = [i for i, m in enumerate(request.history) if m.role != "system"]
        dropped = set(others[: max(0, len(others) - limit)])
        return [m for i, m in enumerate(request.history) if i not in dropped]

    async def _sent(
        self, message: ParsedMessage, user_id: str, request_id: str, uploaded: list[uuid.UUID]
    ) -> SentMessage:
        image_ids = [await self._image_id(p, user_id, request_id, uploaded) for p in message.images]
        return SentMessage(message.role, message.text, image_ids)

    async def _image_id(self, part: ImagePart, user_id: str, request_id: str, uploaded: list[uuid.UUID]) -> uuid.UUID:
        if part.image_id is not None:
            return part.image_id
        assert part.data is not None
        image_id = await self.chat.upload_image(
            user_id, _chunks(part.data), filename=None, content_type=part.media_type, request_id=request_id
        )
        uploaded.append(image_id)
        return image_id


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), UPLOAD_CHUNK):
        yield bytes(view[start : start + UPLOAD_CHUNK])
