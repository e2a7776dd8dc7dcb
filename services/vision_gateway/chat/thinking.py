"""Whether the model can do the thinking a request asks for.

The `think` field's values are the request model's (chat/request.py): exactly what Ollama's
`ThinkValue` decodes. Unset is passed on as unset, so Ollama's default applies: since 0.12.4 a
thinking-capable model thinks unless told not to, and whatever thinking arrives is relayed and stored.

A truthy value for a model without the `thinking` capability is refused before anything is written,
as Ollama itself would refuse it (`"llava" does not support thinking`), but with our own JSON code.
"""

from __future__ import annotations

from common.errors import ModelCannotThink
from services.vision_gateway.capabilities import ModelCapabilities
from services.vision_gateway.chat.request import Think, wants_thinking


def check_can_think(model: ModelCapabilities, think: Think | None) -> None:
    if wants_thinking(think) and "thinking" not in model.capabilities:
        raise ModelCannotThink(f"model {model.name!r} cannot think; leave out think or set it to false")
