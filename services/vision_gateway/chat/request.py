"""The one chat request: every rule of an ask, stated once.

`ChatRequest` is what `POST /api/stream-message` takes as JSON; a multipart form's text parts are
decoded into the same values (http/ask_form.py) and `/v1/chat/completions` is mapped into it
(openai_compat/mapping.py), so all three entries are validated here, by the same rules, with the
same status and code for the same bad field.

Each field's rule is an annotation object (`Text`, `Number`, `Options`, ...) that both validates
the raw JSON value (no coercion: `"5"` is not a number, `true` is not an integer, `2.0` is) and
states the field's JSON Schema. docs/openapi/vision-gateway.yaml's request schemas are checked
against `ChatRequest.model_json_schema()` by tests/contract/test_request_model.py, so the document
cannot drift from the code.

A refusal is a `PydanticCustomError` whose type is the error code (`bad_request`,
`too_many_images`) and whose context names the field; `parse_chat_request` turns the first one
into the matching `ApiError` (`InvalidField` for `bad_request`). What the operator allows one
request (`RequestLimits`: images per message, keep_alive, num_ctx) is checked here too, from the
validation context, so a request over a cap is refused by the same path as a malformed one.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self, get_args

from jsonschema import SchemaError
from jsonschema.validators import Draft202012Validator, validator_for
from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError, ValidationInfo
from pydantic import model_validator as _model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from common.errors import ApiError, BadRequest, TooManyImages
from common.ids import parse_uuid

MAX_MESSAGE_CHARS = 32_000
MAX_MODEL_CHARS = 200
MAX_FORMAT_CHARS = 16 * 1024  # the schema as compact ASCII JSON; a grammar is built from it per request
MAX_FORMAT_DEPTH = 32  # nesting of objects/arrays; deeper documents exhaust the schema checker's recursion
MAX_STOP_SEQUENCES = 8
MAX_STOP_CHARS = 200
MAX_TOKENS = 131_072  # num_ctx, num_predict, num_keep, repeat_last_n: no current model goes further
INT32 = 2**31 - 1
# keep_alive: a number of seconds, or a Go duration with units (Go's time.ParseDuration grammar,
# without the µ spelling and bounded so it cannot overflow Go's int64 nanoseconds). "-1" without a
# unit is no Go duration: send the number -1 (or "-1m"). ASCII classes only: Python's \d is Unicode.
KEEP_ALIVE_PATTERN = r"^-?([0-9]{1,5}(\.[0-9]{1,3})?(ns|us|ms|s|m|h)){1,3}$"
_KEEP_ALIVE = re.compile(KEEP_ALIVE_PATTERN)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# What the document's `not: {pattern: "^\s*$"}` calls space: ECMAScript's \s. Python's str.strip() also strips
# U+001C..U+001F and U+0085, which would refuse text the document calls valid.
ECMA_SPACE = "\t\n\v\f\r \u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff" + "".join(map(chr, range(0x2000, 0x200B)))
_BLANK = {"not": {"pattern": "^\\s*$"}}

ThinkLevel = Literal["low", "medium", "high", "max"]
Think = bool | ThinkLevel
THINK_LEVELS: tuple[str, ...] = get_args(ThinkLevel)


def refuse(field: str, rule: str, code: str = "bad_request") -> PydanticCustomError:
    """A refusal of `field` (a dotted path such as options.temperature); `code` is the error code."""
    return PydanticCustomError(code, "{field} {rule}", {"field": field, "rule": rule})


class InvalidField(BadRequest):
    """A 400 `bad_request` naming the field; the OpenAI adapter re-words it with its own field name."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field} {rule}")
        self.field = field
        self.rule = rule


def unstorable(text: str) -> str | None:
    """Why PostgreSQL text cannot hold `text` (JSON allows NUL and lone surrogates; text does not), or None."""
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text"
    return None


def has_text(value: str) -> bool:
    return bool(value.strip(ECMA_SPACE))


class Rule:
    """An annotation that validates a raw JSON value by `check` and states its JSON Schema."""

    def check(self, value: Any, field: str) -> Any:
        raise NotImplementedError

    def schema(self) -> JsonSchemaValue:
        raise NotImplementedError

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.with_info_plain_validator_function(self._validate)

    def _validate(self, value: Any, info: ValidationInfo) -> Any:
        return self.check(value, info.field_name or "value")

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return self.schema()


@dataclass(frozen=True)
class Text(Rule):
    """Text PostgreSQL can store, with at least one non-space character, up to `max_chars`."""

    max_chars: int
    required_rule: str  # how a missing or blank value is refused
    blank_allowed: bool = False  # the model decides (an image-only /v1 message)
    strip: bool = False

    def check(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or (not self.blank_allowed and not has_text(value)):
            raise refuse(field, self.required_rule)
        if len(value) > self.max_chars:
            raise refuse(field, f"is longer than {self.max_chars} characters")
        if (problem := unstorable(value)) is not None:
            raise refuse(field, problem)
        return value.strip(ECMA_SPACE) if self.strip else value

    def schema(self) -> JsonSchemaValue:
        return {"type": "string", "minLength": 1, "maxLength": self.max_chars, **_BLANK}


def _image_id(raw: Any, field: str) -> uuid.UUID:
    if isinstance(raw, uuid.UUID):  # an image this request uploaded
        return raw
    value = parse_uuid(raw)
    if value is None:
        if isinstance(raw, str) and re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", raw):
            raise refuse(field, "must hold image IDs, not URLs")
        raise refuse(field, "must be a UUID")
    return value


@dataclass(frozen=True)
class OptionalUuid(Rule):
    """A UUID, or null for none. "" is a client bug, not a request for none."""

    def check(self, value: Any, field: str) -> uuid.UUID | None:
        return None if value is None else _image_id(value, field)

    def schema(self) -> JsonSchemaValue:
        return {"type": ["string", "null"], "format": "uuid"}


@dataclass(frozen=True)
class ImageIds(Rule):
    """The user's image-store IDs, never URLs; how many is the operator's (RequestLimits)."""

    documented_max: int

    def check(self, value: Any, field: str) -> tuple[uuid.UUID, ...]:
        if not isinstance(value, list | tuple):
            raise refuse(field, "must be a list of image IDs")
        return tuple(_image_id(raw, field) for raw in value)

    def schema(self) -> JsonSchemaValue:
        return {"type": "array", "items": {"type": "string", "format": "uuid"}, "maxItems": self.documented_max}


@dataclass(frozen=True)
class Number(Rule):
    """A JSON number in [low, high]; `integer` as JSON Schema means it (2.0 is an integer, true is not)."""

    low: float
    high: float
    integer: bool = False

    def check(self, value: Any, field: str) -> int | float:
        kind = "an integer" if self.integer else "a number"
        ok = not isinstance(value, bool) and isinstance(value, int | float) and self.low <= value <= self.high
        if ok and self.integer and isinstance(value, float):
            ok = value.is_integer()
        if not ok:
            raise refuse(field, f"must be {kind} from {_shown(self.low)} to {_shown(self.high)}")
        return int(value) if self.integer else value

    def schema(self) -> JsonSchemaValue:
        return {"type": "integer" if self.integer else "number", "minimum": self.low, "maximum": self.high}


def _shown(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


@dataclass(frozen=True)
class StopList(Rule):
    """Ollama's `stop` is a []string: a JSON array, never a bare string."""

    def check(self, value: Any, field: str) -> list[str]:
        if (
            not isinstance(value, list)
            or len(value) > MAX_STOP_SEQUENCES
            or not all(isinstance(s, str) and 1 <= len(s) <= MAX_STOP_CHARS for s in value)
        ):
            raise refuse(
                field, f"must be a list of at most {MAX_STOP_SEQUENCES} strings of 1 to {MAX_STOP_CHARS} characters"
            )
        return value

    def schema(self) -> JsonSchemaValue:
        return {
            "type": "array",
            "maxItems": MAX_STOP_SEQUENCES,
            "items": {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS},
        }


# Options a client may set. Those that choose server resources rather than the answer (num_gpu,
# main_gpu, num_thread, num_batch, use_mmap, use_mlock, numa, low_vram, vocab_only...) are the
# operator's, and deprecated ones (penalize_newline, tfs_z) are refused with the other unknown keys.
OPTIONS: dict[str, Number | StopList] = {
    "temperature": Number(0, 2),
    "top_p": Number(0, 1),
    "min_p": Number(0, 1),
    "typical_p": Number(0, 1),
    "top_k": Number(0, 1000, integer=True),
    "seed": Number(-INT32 - 1, INT32, integer=True),
    "num_ctx": Number(1, MAX_TOKENS, integer=True),
    "num_predict": Number(-2, MAX_TOKENS, integer=True),  # -1: no limit, -2: until the context is full
    "num_keep": Number(-1, MAX_TOKENS, integer=True),
    "repeat_penalty": Number(0, 2),
    "repeat_last_n": Number(-1, MAX_TOKENS, integer=True),  # -1: num_ctx, 0: off
    "presence_penalty": Number(-2, 2),
    "frequency_penalty": Number(-2, 2),
    "mirostat": Number(0, 2, integer=True),  # 0 off, 1 Mirostat, 2 Mirostat 2.0
    "mirostat_tau": Number(0, 10),
    "mirostat_eta": Number(0, 1),
    "stop": StopList(),
}


@dataclass(frozen=True)
class Options(Rule):
    """Ollama's `options`: a JSON object of allow-listed keys; an empty object is no options."""

    def check(self, value: Any, field: str) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            raise refuse(field, "must be a JSON object")
        checked: dict[str, Any] = {}
        for name, option in value.items():
            rule = OPTIONS.get(name)
            if rule is None:
                raise refuse(f"{field}.{name}", f"is not a supported option (supported: {', '.join(OPTIONS)})")
            checked[name] = rule.check(option, f"{field}.{name}")
        return checked or None

    def schema(self) -> JsonSchemaValue:
        properties = {name: rule.schema() for name, rule in OPTIONS.items()}
        return {"type": "object", "additionalProperties": False, "properties": properties}


@dataclass(frozen=True)
class Format(Rule):
    """Structured output: `"json"` (any JSON) or a JSON Schema the answer must follow."""

    def check(self, value: Any, field: str) -> str | dict[str, Any]:
        if value == "json" and isinstance(value, str):
            return value
        if not isinstance(value, dict):
            raise refuse(field, 'must be "json" or a JSON Schema object')
        if _depth(value) > MAX_FORMAT_DEPTH:
            raise refuse(field, f"must be nested at most {MAX_FORMAT_DEPTH} levels deep")
        if len(json.dumps(value, separators=(",", ":"))) > MAX_FORMAT_CHARS:
            raise refuse(field, f"must be at most {MAX_FORMAT_CHARS} characters as compact JSON")
        declared = value.get("$schema")
        checker = (
            validator_for(value, default=Draft202012Validator) if isinstance(declared, str) else Draft202012Validator
        )
        try:
            checker.check_schema(value)
        except SchemaError as exc:
            where = "/".join(str(p) for p in exc.path)
            reason = exc.message if len(exc.message) <= 200 else exc.message[:200] + "..."  # it quotes the value
            raise refuse(field, f"is not a valid JSON Schema at /{where}: {reason}") from exc
        return value

    def schema(self) -> JsonSchemaValue:
        return {"oneOf": [{"type": "string", "enum": ["json"]}, {"type": "object"}]}


def _depth(value: Any) -> int:
    """Nesting depth without recursion (the value may be as deep as the body limit allows)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_FORMAT_DEPTH:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


KEEP_ALIVE_SECONDS = Number(-INT32 - 1, INT32)


@dataclass(frozen=True)
class KeepAlive(Rule):
    """Seconds (negative: keep the model loaded for ever, 0: unload after the answer) or a Go duration."""

    def check(self, value: Any, field: str) -> int | float | str:
        if not isinstance(value, str):
            return KEEP_ALIVE_SECONDS.check(value, field)
        if _KEEP_ALIVE.fullmatch(value) is None:  # not match(): $ also matches before a final newline
            raise refuse(field, 'must be a number of seconds or a duration such as "5m", "1h30m" or "-1m"')
        return value

    def schema(self) -> JsonSchemaValue:
        return {"oneOf": [KEEP_ALIVE_SECONDS.schema(), {"type": "string", "pattern": KEEP_ALIVE_PATTERN}]}


def keep_alive_seconds(value: int | float | str) -> float:
    """A checked keep_alive (seconds, or a Go duration such as "1h30m" or "-1m") in seconds."""
    if not isinstance(value, str):
        return float(value)
    seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(value))
    return -seconds if value.startswith("-") else seconds


@dataclass(frozen=True)
class ThinkRule(Rule):
    """Exactly what Ollama's `ThinkValue` decodes: a boolean or one of its levels ("max" included)."""

    def check(self, value: Any, field: str) -> Think | None:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str) and value in THINK_LEVELS:
            return value  # type: ignore[return-value]  # narrowed by the membership test
        raise refuse(field, 'must be true, false or one of "low", "medium", "high", "max"')

    def schema(self) -> JsonSchemaValue:
        return {"oneOf": [{"type": "boolean"}, {"type": "string", "enum": list(THINK_LEVELS)}, {"type": "null"}]}


def wants_thinking(think: Think | None) -> bool:
    """Ollama's `ThinkValue.Bool()`: true, or any level, asks for thinking."""
    return think is not None and think is not False


NO_KEEP_ALIVE_CAP = -1
NO_NUM_CTX_CAP = 0
DEFAULT_MAX_IMAGES_PER_MESSAGE = 4


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """What the operator lets one request ask of the Ollama server it shares with everyone else.

    `keep_alive` decides how long a model stays resident (a negative value pins it for ever) and
    `options.num_ctx` how much memory its context takes: legitimate wishes, capped only when the
    operator says so (VISION_MAX_KEEP_ALIVE_SECONDS, VISION_MAX_NUM_CTX).
    """

    max_images: int = DEFAULT_MAX_IMAGES_PER_MESSAGE  # VISION_MAX_IMAGES_PER_MESSAGE
    max_keep_alive_seconds: int = NO_KEEP_ALIVE_CAP
    max_num_ctx: int = NO_NUM_CTX_CAP
    blank_message_with_images: bool = False  # /v1: a user turn may be images only

    def check_images(self, count: int, field: str = "image_ids") -> None:
        if count > self.max_images:
            raise refuse(field, f"holds {count} images; at most {self.max_images} per message", "too_many_images")

    def check_keep_alive(self, keep_alive: int | float | str | None) -> None:
        cap = self.max_keep_alive_seconds
        if keep_alive is None or cap == NO_KEEP_ALIVE_CAP:
            return
        seconds = keep_alive_seconds(keep_alive)
        if seconds < 0:
            raise refuse("keep_alive", f"must not keep the model loaded for ever here (at most {cap} s)")
        if seconds > cap:
            raise refuse("keep_alive", f"must be at most {cap} s on this server")

    def check_num_ctx(self, options: Mapping[str, Any] | None) -> None:
        num_ctx = (options or {}).get("num_ctx")
        if self.max_num_ctx != NO_NUM_CTX_CAP and num_ctx is not None and num_ctx > self.max_num_ctx:
            raise refuse("options.num_ctx", f"must be at most {self.max_num_ctx} on this server")


MESSAGE = Text(MAX_MESSAGE_CHARS, "is required and must be non-empty text", blank_allowed=True)
MODEL = Text(MAX_MODEL_CHARS, "is required and must be a model name", strip=True)


class ChatRequest(BaseModel):
    """A chat request as a client states it; `parse_chat_request` makes one or raises an ApiError."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    message: Annotated[str, MESSAGE]
    model: Annotated[str, MODEL]
    conversation_id: Annotated[uuid.UUID | None, OptionalUuid()] = None
    image_ids: Annotated[tuple[uuid.UUID, ...], ImageIds(DEFAULT_MAX_IMAGES_PER_MESSAGE)] = ()
    options: Annotated[dict[str, Any] | None, Options()] = None
    format: Annotated[str | dict[str, Any] | None, Format()] = None
    keep_alive: Annotated[int | float | str | None, KeepAlive()] = None
    think: Annotated[Think | None, ThinkRule()] = None

    REQUIRED: ClassVar[tuple[str, ...]] = ("message", "model")

    @_model_validator(mode="after")
    def _within_limits(self, info: ValidationInfo) -> Self:
        limits = info.context if isinstance(info.context, RequestLimits) else RequestLimits()
        if not has_text(self.message) and not (limits.blank_message_with_images and self.image_ids):
            raise refuse("message", MESSAGE.required_rule)
        limits.check_images(len(self.image_ids))
        limits.check_keep_alive(self.keep_alive)
        limits.check_num_ctx(self.options)
        return self

    def ollama_fields(self) -> dict[str, Any]:
        """What this request asks of Ollama besides the messages; unset fields are not sent."""
        fields: dict[str, Any] = {}
        if self.options:
            fields["options"] = self.options
        for name in ("format", "keep_alive", "think"):
            if (value := getattr(self, name)) is not None:
                fields[name] = value
        return fields


# ---- from a ValidationError to the ApiError a client sees ----------------------------------------

_ERRORS: dict[str, Callable[[str, str], ApiError]] = {
    "bad_request": InvalidField,
    "too_many_images": lambda field, rule: TooManyImages(f"{field} {rule}"),
}


def parse_chat_request(fields: Mapping[str, Any], limits: RequestLimits | None = None) -> ChatRequest:
    """Validate a request's fields (a JSON object, or a form decoded into one) by the one model."""
    try:
        return ChatRequest.model_validate(fields, context=limits or RequestLimits())
    except ValidationError as exc:
        raise api_error(exc) from None


def check_fields(fields: Mapping[str, Any], limits: RequestLimits) -> dict[str, Any]:
    """The fields present (a form's fields before its first image) by their rules and the operator's
    caps; their checked values."""
    checked: dict[str, Any] = {}
    for name, value in fields.items():
        info = ChatRequest.model_fields.get(name)
        if info is None:
            continue
        rule = next(m for m in info.metadata if isinstance(m, Rule))
        try:
            checked[name] = rule.check(value, name)
            limits.check_keep_alive(checked.get("keep_alive"))
            limits.check_num_ctx(checked.get("options"))
        except PydanticCustomError as exc:
            raise _from_line(exc.type, exc.context or {}, name) from None
    return checked


def check_text(value: Any, field: str) -> str:
    """A message's text by the `message` field's rules, blank allowed (an earlier turn may be images only)."""
    try:
        return MESSAGE.check(value, field)
    except PydanticCustomError as exc:
        raise _from_line(exc.type, exc.context or {}, field) from None


def api_error(exc: ValidationError) -> ApiError:
    """The first problem, as the error class of its code."""
    first = exc.errors(include_url=False)[0]
    location = ".".join(str(part) for part in first["loc"]) or "body"
    if first["type"] == "missing" and location in ChatRequest.REQUIRED:
        rule = next(m for m in ChatRequest.model_fields[location].metadata if isinstance(m, Text))
        return InvalidField(location, rule.required_rule)
    return _from_line(first["type"], first.get("ctx") or {}, location, first["msg"])


def _from_line(code: str, context: Mapping[str, Any], location: str, message: str = "") -> ApiError:
    field, rule = context.get("field"), context.get("rule")
    if isinstance(field, str) and isinstance(rule, str):
        return _ERRORS.get(code, InvalidField)(field, rule)
    return InvalidField(location, message or "is not valid")
