"""The operator caps' arithmetic: Go durations to seconds, and where the limits fall."""

from __future__ import annotations

from typing import Any

import pytest

from services.vision_gateway.chat.request import InvalidField, RequestLimits, keep_alive_seconds, parse_chat_request


def check_keep_alive(value: Any) -> Any:
    return parse_chat_request({"message": "hi", "model": "llava", "keep_alive": value}).keep_alive


class OperatorCaps:
    """The caps as the request model applies them: a request with these fields, under these limits."""

    def __init__(self, **caps: int) -> None:
        self.limits = RequestLimits(**caps)

    def check(self, keep_alive: Any, options: Any) -> None:
        fields: dict[str, Any] = {"message": "hi", "model": "llava", "options": options or {}}
        if keep_alive is not None:
            fields["keep_alive"] = keep_alive
        parse_chat_request(fields, self.limits)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (300, 300.0),
        (-1, -1.0),
        (0, 0.0),
        (2.5, 2.5),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1h0m0.5s", 3600.5),
        ("-1m", -60.0),
        ("1500ms", 1.5),
        ("90us", 0.00009),
        ("10ns", 1e-8),
    ],
)
def test_keep_alive_in_seconds(value: int | float | str, seconds: float) -> None:
    assert keep_alive_seconds(check_keep_alive(value)) == pytest.approx(seconds)


def test_no_caps_by_default_lets_everything_ollama_accepts_through() -> None:
    OperatorCaps().check(-1, {"num_ctx": 131072})
    OperatorCaps().check("-1m", None)


def test_the_cap_itself_is_allowed_and_one_more_is_not() -> None:
    caps = OperatorCaps(max_keep_alive_seconds=60, max_num_ctx=4096)
    caps.check("1m", {"num_ctx": 4096})
    caps.check(0, {})
    with pytest.raises(InvalidField) as over:
        caps.check("1m0.001s", None)
    assert over.value.field == "keep_alive"
    with pytest.raises(InvalidField) as forever:
        caps.check(-5, None)
    assert "for ever" in str(forever.value)
    with pytest.raises(InvalidField) as context:
        caps.check(None, {"num_ctx": 4097})
    assert context.value.field == "options.num_ctx"


def test_a_zero_keep_alive_cap_allows_only_unloading_at_once() -> None:
    caps = OperatorCaps(max_keep_alive_seconds=0)
    caps.check(0, None)
    with pytest.raises(InvalidField):
        caps.check("1s", None)
