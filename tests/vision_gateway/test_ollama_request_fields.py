"""The rules of the one chat request (chat/request.py) for `format`, `keep_alive` and `options`, case by
case, and the OpenAI mapping into it (openai_compat/mapping.py).

Pure: no stack. The live tests (test_structured_output.py) prove the same rules hold over HTTP,
write nothing when they refuse and reach Ollama when they accept.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import yaml

from common.errors import BadRequest
from services.vision_gateway.ask_form import _FORM_TEXT
from services.vision_gateway.chat.request import (
    KEEP_ALIVE_PATTERN,
    ChatRequest,
    InvalidField,
    RequestLimits,
    parse_chat_request,
)
from services.vision_gateway.openai_compat.mapping import map_completion, openai_params
from tests.conftest import ROOT

KEEP_ALIVE_TEXT_PATTERN = r"^(-?[0-9]{1,9}|-?([0-9]{1,5}(\.[0-9]{1,3})?(ns|us|ms|s|m|h)){1,3})$"


def _request(**fields: Any) -> ChatRequest:
    return parse_chat_request({"message": "hi", "model": "llava", **fields})


def check_options(options: Any) -> Any:
    return _request(options=options).options


def check_keep_alive(value: Any) -> Any:
    return _request(keep_alive=value).keep_alive


def keep_alive_from_text(text: str) -> Any:
    """As a multipart part: decoded as the form decodes it, then judged by the same rules."""
    return check_keep_alive(_FORM_TEXT["keep_alive"](text))


def check_format(value: Any) -> Any:
    return _request(format=value).format


def parse_completion_request(body: Any, *, max_images: int) -> ChatRequest:
    """/v1's path into the one model: the OpenAI mapping, then the chat request's rules."""
    completion = map_completion(body, max_images=max_images)
    with openai_params(completion.params):
        return parse_chat_request({**completion.fields, "image_ids": []}, RequestLimits(blank_message_with_images=True))


def _nested(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {}
    for _ in range(levels):
        schema = {"items": schema}
    return {"not": schema}


SCHEMA = {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}}, "required": ["kind"]}


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 0},
        {"temperature": 2, "top_p": 0.5, "min_p": 0.05, "typical_p": 1},
        {"top_k": 40, "seed": -1, "num_ctx": 8192, "num_predict": -2},
        {"num_keep": -1, "repeat_last_n": -1, "repeat_penalty": 1.1},
        {"presence_penalty": -2, "frequency_penalty": 2},
        {"mirostat": 2, "mirostat_tau": 5.0, "mirostat_eta": 0.1},
        {"stop": []},
        {"stop": ["\n\n", "User:"]},
        {"seed": 2**31 - 1},
    ],
)
def test_accepted_options_pass_unchanged(options: dict[str, Any]) -> None:
    assert check_options(options) == options


def test_an_integral_number_is_an_integer_and_no_options_are_none() -> None:
    checked = check_options({"num_ctx": 4096.0})  # JSON Schema's integer: a number with no fraction
    assert checked == {"num_ctx": 4096}
    assert type(checked["num_ctx"]) is int, "Ollama gets an integer, not 4096.0"
    assert check_options({}) is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": 2.5}, "options.temperature must be a number from 0 to 2"),
        ({"temperature": -0.1}, "options.temperature must be a number from 0 to 2"),
        ({"temperature": "0.7"}, "options.temperature must be a number from 0 to 2"),
        ({"temperature": True}, "options.temperature must be a number from 0 to 2"),
        ({"temperature": None}, "options.temperature must be a number from 0 to 2"),
        ({"temperature": math.nan}, "options.temperature must be a number from 0 to 2"),
        ({"top_p": 1.01}, "options.top_p must be a number from 0 to 1"),
        ({"top_k": 40.5}, "options.top_k must be an integer from 0 to 1000"),
        ({"top_k": True}, "options.top_k must be an integer from 0 to 1000"),
        ({"top_k": 1001}, "options.top_k must be an integer from 0 to 1000"),
        ({"seed": 2**31}, "options.seed must be an integer from -2147483648 to 2147483647"),
        ({"num_ctx": 0}, "options.num_ctx must be an integer from 1 to 131072"),
        ({"num_ctx": math.inf}, "options.num_ctx must be an integer from 1 to 131072"),
        ({"num_predict": -3}, "options.num_predict must be an integer from -2 to 131072"),
        ({"mirostat": 3}, "options.mirostat must be an integer from 0 to 2"),
        ({"mirostat": False}, "options.mirostat must be an integer from 0 to 2"),
        ({"repeat_last_n": -2}, "options.repeat_last_n must be an integer from -1 to 131072"),
        ({"stop": "\n"}, "options.stop must be a list of at most 8 strings of 1 to 200 characters"),
        ({"stop": [""]}, "options.stop must be a list of at most 8 strings"),
        ({"stop": ["x" * 201]}, "options.stop must be a list of at most 8 strings"),
        ({"stop": ["a"] * 9}, "options.stop must be a list of at most 8 strings"),
        ({"stop": [1]}, "options.stop must be a list of at most 8 strings"),
        ({"num_gpu": 99}, "options.num_gpu is not a supported option"),
        ({"num_thread": 64}, "options.num_thread is not a supported option"),
        ({"penalize_newline": True}, "options.penalize_newline is not a supported option"),
        ({"Temperature": 0.5}, "options.Temperature is not a supported option"),
    ],
)
def test_refused_options_name_the_field(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidField) as refused:
        check_options(options)
    assert (refused.value.status, refused.value.code) == (400, "bad_request")
    assert refused.value.message.startswith(message), refused.value.message
    assert refused.value.field == f"options.{next(iter(options))}"


@pytest.mark.parametrize("options", [None, [], "temperature=1", 5])
def test_options_must_be_an_object(options: Any) -> None:
    with pytest.raises(BadRequest, match="options must be a JSON object"):
        check_options(options)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), (300, 300), (-1, -1), (2.5, 2.5), ("5m", "5m"), ("1h30m", "1h30m"), ("-1m", "-1m"), ("1.5h", "1.5h"),
     ("250ms", "250ms"), ("10s", "10s"), ("1h1m1s", "1h1m1s")],
)  # fmt: skip
def test_accepted_keep_alive(value: Any, expected: Any) -> None:
    assert check_keep_alive(value) == expected


@pytest.mark.parametrize(
    "value",
    ["-1", "5", "", "5 m", "5M", "5d", "forever", "1h1m1s1ms", "123456h", " 5m", "5m\n", "٥m", True, None,
     [300], {"seconds": 3}, math.nan, math.inf, 2**31, -(2**31) - 1],
)  # fmt: skip
def test_refused_keep_alive(value: Any) -> None:
    with pytest.raises(InvalidField) as refused:
        check_keep_alive(value)
    assert refused.value.message.startswith("keep_alive must be")


@pytest.mark.parametrize(("text", "expected"), [("300", 300), ("-1", -1), ("0", 0), ("5m", "5m"), ("1h30m", "1h30m")])
def test_keep_alive_multipart_text(text: str, expected: Any) -> None:
    assert keep_alive_from_text(text) == expected


@pytest.mark.parametrize("text", ["1.5", "1e3", "true", '"5m"', "1234567890", "", "5 m"])
def test_keep_alive_multipart_text_refused(text: str) -> None:
    with pytest.raises(InvalidField, match="keep_alive must be"):
        keep_alive_from_text(text)


@pytest.mark.parametrize(
    "schema",
    [
        SCHEMA,
        {},
        {"$schema": "http://json-schema.org/draft-07/schema#", "type": "array", "items": [{"type": "string"}]},
        {"type": ["string", "null"], "maxLength": 3},
        {"properties": {"n": {"type": "integer", "minimum": 0}}, "additionalProperties": False},
    ],
)
def test_accepted_formats(schema: dict[str, Any]) -> None:
    assert check_format(schema) is schema
    assert check_format("json") == "json"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("JSON", 'format must be "json" or a JSON Schema object'),
        ("", 'format must be "json" or a JSON Schema object'),
        (None, 'format must be "json" or a JSON Schema object'),
        (["json"], 'format must be "json" or a JSON Schema object'),
        (True, 'format must be "json" or a JSON Schema object'),
        ({"type": "strin"}, "format is not a valid JSON Schema at /type"),
        ({"type": "object", "required": "kind"}, "format is not a valid JSON Schema at /required"),
        ({"properties": {"n": {"minimum": "0"}}}, "format is not a valid JSON Schema at /properties/n/minimum"),
        ({"pattern": "("}, "format is not a valid JSON Schema at /pattern"),
        ({"$schema": {"a": 1}}, "format is not a valid JSON Schema"),
        ({"description": "x" * 17_000}, "format must be at most 16384 characters as compact JSON"),
        ({"description": "é" * 3_000}, "format must be at most 16384 characters"),  # \u00e9: 6 characters each
        (_nested(40), "format must be nested at most 32 levels deep"),
    ],
)
def test_refused_formats(value: Any, message: str) -> None:
    with pytest.raises(InvalidField) as refused:
        check_format(value)
    assert refused.value.message.startswith(message), refused.value.message


def test_absent_fields_are_not_sent_and_present_ones_are_checked() -> None:
    assert _request().ollama_fields() == _request(options={}).ollama_fields() == {}
    parsed = _request(format=SCHEMA, keep_alive="10m", options={"seed": 7})
    assert parsed.ollama_fields() == {"format": SCHEMA, "keep_alive": "10m", "options": {"seed": 7}}
    with pytest.raises(InvalidField, match=r"^keep_alive"):
        _request(keep_alive=None)
    with pytest.raises(InvalidField, match=r"^format"):
        _request(format=None)


def test_the_form_keep_alive_text_pattern_is_what_the_decoder_accepts() -> None:
    """The document's KeepAliveText: an integer of seconds, or a duration."""
    schemas = yaml.safe_load((ROOT / "docs" / "openapi" / "vision-gateway.yaml").read_text())["components"]["schemas"]
    assert schemas["KeepAliveText"]["pattern"] == KEEP_ALIVE_TEXT_PATTERN
    assert re.fullmatch(KEEP_ALIVE_TEXT_PATTERN, "-1")
    assert not re.fullmatch(KEEP_ALIVE_PATTERN, "-1")


# ---- the OpenAI adapter's fields go through the same rules, reported under OpenAI's names ----------

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("extra", "format_", "options"),
    [
        ({}, None, None),
        ({"response_format": {"type": "text"}}, None, None),
        ({"response_format": {"type": "json_object"}}, "json", None),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}}, SCHEMA, None),
        ({"temperature": 1.5, "seed": 3, "max_tokens": 9}, None, {"temperature": 1.5, "seed": 3, "num_predict": 9}),
        ({"stop": "END", "max_completion_tokens": 4}, None, {"stop": ["END"], "num_predict": 4}),
    ],
)
def test_openai_fields_become_ollama_fields(extra: dict[str, Any], format_: Any, options: Any) -> None:
    parsed = parse_completion_request({"model": "llava", "messages": HI, **extra}, max_images=4)
    assert (parsed.format, parsed.options) == (format_, options)


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        ({"top_p": 1.5}, "top_p", "top_p must be a number from 0 to 1"),
        ({"seed": True}, "seed", "seed must be an integer from -2147483648 to 2147483647"),
        ({"max_tokens": 0}, "max_tokens", "max_tokens must be an integer from 1 to 131072"),
        ({"max_completion_tokens": 200_000}, "max_completion_tokens", "max_completion_tokens must be an integer"),
        ({"max_tokens": -1}, "max_tokens", "max_tokens must be an integer from 1 to 131072"),
        (
            {"messages": [{"role": "user", "content": "a\x00b"}]},
            "messages[0].content",
            "messages[0].content must not contain NUL",
        ),
        (
            {"messages": [{"role": "user", "content": "\ud800"}]},
            "messages[0].content",
            "messages[0].content must be valid Unicode",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "x\x00"}]}]},
            "messages[0].content",
            "messages[0].content must not contain NUL",
        ),
        ({"model": "lla\x00va"}, "model", "model must not contain NUL"),
        ({"model": " "}, "model", "model is required and must be a model name"),
        ({"stop": ["x" * 201]}, "stop", "stop must be a list of at most 8 strings"),
        ({"response_format": "json"}, "response_format", "response_format.type must be text, json_object or"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format.json_schema.schema", ""),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"required": 1}}}},
            "response_format.json_schema.schema",
            "response_format.json_schema.schema is not a valid JSON Schema at /required",
        ),
    ],
)
def test_openai_refusals_carry_the_openai_param(extra: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_completion_request({"model": "llava", "messages": HI, **extra}, max_images=4)
    assert refused.value.details == {"param": param}
    assert refused.value.message.startswith(message), refused.value.message
