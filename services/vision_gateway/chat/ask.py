"""One ask on its way in: the single admission path of every entry (JSON, multipart, /v1).

`async with ChatService.admit(...) as ask` holds one of the user's stream slots (per-user
concurrency and rate, taken before anything is read further, uploaded or written) for the
request's whole life. Through the `Ask` an entry judges a form's early fields (`check_early`),
forwards images (`upload`), and begins the turn (`begin`). If the request fails before its turn
is begun, every image it uploaded is deleted again, whichever entry it came through: the undo
lives here, once. The Ask is its own context manager (not a generator one): it lives as long as
the stream, and a suspended generator would be three more objects and a frame per held stream.

The model lookup an early check makes is remembered, so `begin` does not repeat it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from common.errors import TooManyImages, UploadDisabled
from services.vision_gateway.chat.request import ChatRequest, check_fields, parse_chat_request
from services.vision_gateway.chat.turn import Caller, OpenTurn, SentMessage
from services.vision_gateway.image_store_client import ImageMeta

if TYPE_CHECKING:
    from services.vision_gateway.admission import StreamAdmission
    from services.vision_gateway.chat.policy import ModelChoice
    from services.vision_gateway.chat.service import ChatService
    from services.vision_gateway.settings import GatewaySettings


class Ask:
    __slots__ = ("_admission", "_early", "_service", "caller", "turn", "uploaded")

    def __init__(self, service: ChatService, caller: Caller, admission: StreamAdmission) -> None:
        self._service = service
        self._admission = admission
        self.caller = caller
        # A tuple (the empty one is shared): most asks upload nothing, and the Ask lives as long as the stream.
        self.uploaded: tuple[ImageMeta, ...] = ()
        self.turn: OpenTurn | None = None
        self._early: tuple[str, Any, ModelChoice] | None = None

    async def __aenter__(self) -> Ask:
        self._admission.enter(self.caller.user_id)  # may refuse (429): nothing is held then
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc is not None:
                if self.turn is not None and not self.turn.entered:
                    # Begun but never relayed (the client left, or a step after begin() failed):
                    # close Ollama's request (its backend's in-flight count comes down), record the stop.
                    await asyncio.shield(self._service.abandon(self.turn))
                elif self.turn is None and self.uploaded:
                    await asyncio.shield(self.discard(self.uploaded_ids))  # a refused request keeps none
        finally:
            self._admission.leave(self.caller.user_id)

    @property
    def settings(self) -> GatewaySettings:
        return self._service.settings

    @property
    def uploaded_ids(self) -> list[uuid.UUID]:
        return [meta.image_id for meta in self.uploaded]

    def parse(self, fields: Mapping[str, Any], *, blank_message_with_images: bool = False) -> ChatRequest:
        """The request's fields by the one model, with this server's limits."""
        return parse_chat_request(fields, self._service.limits(blank_message_with_images=blank_message_with_images))

    async def check_early(self, fields: Mapping[str, Any]) -> None:
        """Judge the fields a form sent before its first image, so a refusal costs no upload: their
        rules and the operator's caps, then, once the model is named, the model itself (unknown,
        blind, unable to think). The model lookup is remembered for `begin`."""
        checked = check_fields(fields, self._service.limits())
        if "model" in checked:
            model, think = checked["model"], checked.get("think")
            self._early = (model, think, await self._service.choose_model(model, think, wants_images=True))

    async def upload(
        self, chunks: AsyncIterator[bytes], *, filename: str | None, content_type: str, max_images: int | None = None
    ) -> uuid.UUID:
        """Forward one image to the image-store as it arrives; refused before its first byte moves
        when uploads are off or the request already holds its limit of images."""
        service = self._service
        limit = max_images if max_images is not None else service.settings.max_images_per_message
        if len(self.uploaded) >= limit:
            raise TooManyImages(f"at most {limit} images per message")
        if not service.settings.upload_enabled:
            raise UploadDisabled("image uploads are disabled on this server")
        meta = await service.upload_image(self.caller, chunks, filename=filename, content_type=content_type)
        self.uploaded += (meta,)
        return meta.image_id

    async def begin(
        self, request: ChatRequest, *, history: Sequence[SentMessage] | None = None, grace_seconds: float
    ) -> OpenTurn:
        """Prepare (every check that can refuse) and begin the turn: Ollama's request and its rows."""
        choice = None
        if self._early is not None and self._early[:2] == (request.model, request.think):
            choice = self._early[2]
        known = {meta.image_id: meta for meta in self.uploaded}
        prepared = await self._service.prepare(request, self.caller, history=history, choice=choice, known=known)
        self.turn = await self._service.begin(prepared, grace_seconds=grace_seconds)
        # The links ran alongside Ollama's opening; awaited here, once the Ask holds the turn, so a
        # failure (or the client leaving) abandons the turn through admit() as before.
        await self.turn.linked()
        return self.turn

    async def discard(self, image_ids: Sequence[uuid.UUID]) -> None:
        """Delete images this request uploaded (all of them when it is refused)."""
        await self._service.discard_uploads(image_ids, self.caller)
        gone = set(image_ids)
        self.uploaded = tuple(meta for meta in self.uploaded if meta.image_id not in gone)
