"""The `think` request field: what a client may ask for and whether the model can do it.

Values are exactly what Ollama's `ThinkValue` decodes: a boolean or one of its level strings
("max" included, which Ollama's own error text does not list). Unset (absent or null) is passed
on as unset, so Ollama's default applies: since 0.12.4 a thinking-capable model thinks unless told
not to, and whatever thinking arrives is relayed and stored.

A truthy value for a model without the `thinking` capability is refused before anything is written,
as Ollama itself would refuse it (`"llava" does not support thinking`), but with our own JSON code.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from common.errors import BadRequest, ModelCannotThink
from services.vision_gateway.capabilities import ModelCapabilities

ThinkLevel = Literal["low", "medium", "high", "max"]
Think = bool | ThinkLevel
LEVELS: tuple[str, ...] = get_args(ThinkLevel)
_DESCRIBED = 'think must be true, false or one of "low", "medium", "high", "max"'
# A multipart form sends text only: these spellings stand for the JSON booleans.
_FORM_BOOLEANS = {"true": True, "false": False}


def parse_think(raw: Any) -> Think | None:
    """The JSON field's value; None when absent or null (Ollama's default then applies)."""
    if raw is None or isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw in LEVELS:
        return raw  # type: ignore[return-value]  # narrowed by the membership test
    raise BadRequest(_DESCRIBED)


def think_from_form(text: str) -> Any:
    """A multipart `think` part: "true"/"false" are the booleans, anything else is checked as a level."""
    return _FORM_BOOLEANS.get(text, text)


def wants_thinking(think: Think | None) -> bool:
    """Ollama's `ThinkValue.Bool()`: true, or any level, asks for thinking."""
    return think is not None and think is not False


def check_can_think(model: ModelCapabilities, think: Think | None) -> None:
    if wants_thinking(think) and "thinking" not in model.capabilities:
        raise ModelCannotThink(f"model {model.name!r} cannot think; leave out think or set it to false")
