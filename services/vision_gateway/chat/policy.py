"""Which model answers and whether it gets the images: pure decisions, no I/O.

The service looks the capabilities up; these functions only decide, so every branch of the
fallback policy is unit-tested without Ollama.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from common.errors import ModelNotVisionCapable
from services.vision_gateway.capabilities import ModelCapabilities
from services.vision_gateway.chat import events
from services.vision_gateway.chat.prompt import HistoryEntry


@dataclass(frozen=True, slots=True)
class ModelChoice:
    model: str
    send_images: bool
    vision: bool  # whether the requested model can see (reported in the start event)
    notices: tuple[events.NoticeEvent, ...] = field(default=())


def needs_fallback_lookup(requested: ModelCapabilities, *, wants_images: bool, policy: str) -> bool:
    return wants_images and not requested.vision and policy == "fallback_model"


def choose_model(
    requested: ModelCapabilities,
    *,
    wants_images: bool,
    policy: str,
    fallback: ModelCapabilities | None = None,
) -> ModelChoice:
    """Apply VISION_FALLBACK_POLICY (reject | fallback_model | text_only) to a request."""
    if not wants_images or requested.vision:
        return ModelChoice(requested.name, send_images=wants_images, vision=requested.vision)
    if policy == "reject":
        raise ModelNotVisionCapable(
            f"model {requested.name!r} cannot see images; choose a vision model or send text only"
        )
    if policy == "fallback_model":
        if fallback is None or not fallback.vision:
            name = fallback.name if fallback is not None else "(none)"
            raise ModelNotVisionCapable(f"neither {requested.name!r} nor the fallback model {name!r} can see images")
        message = f"{requested.name} cannot see images; {fallback.name} answers instead"
        notices = (events.notice("fallback_model", message),)
        return ModelChoice(fallback.name, send_images=True, vision=False, notices=notices)
    message = f"{requested.name} cannot see images; answering from the text only"
    notices = (events.notice("images_ignored", message),)
    return ModelChoice(requested.name, send_images=False, vision=False, notices=notices)


def history_image_ids(
    history: Sequence[HistoryEntry], *, new_images: int, history_images: int, max_per_request: int
) -> list[uuid.UUID]:
    """Images of earlier user turns to resend, newest first, within both per-request limits."""
    budget = max(0, min(history_images, max_per_request - new_images))
    newest_first = [i for m in reversed(history) if m.role == "user" for i in m.image_ids]
    return newest_first[:budget]
