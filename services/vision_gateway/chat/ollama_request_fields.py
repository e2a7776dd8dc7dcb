"""The Ollama request fields a client may set: `format`, `keep_alive` and an allow-list of `options`.

Pure checks, no I/O, run while parsing so that a refused request writes nothing and reaches no one.
Ollama itself only logs unknown option keys, and refuses a wrong-typed value or format only once
the request reaches it: a 502 `upstream_error` at best, an `error` event after the stream began at
worst. So the gateway checks them first and names the field at fault.
The rules are those docs/openapi/vision-gateway.yaml states (schemathesis holds the two together):
a change here is a change there.

Options that choose server resources rather than the answer (num_gpu, main_gpu, num_thread,
num_batch, use_mmap, use_mlock, numa, low_vram, vocab_only...) are left to the operator, and
deprecated ones (penalize_newline, tfs_z) are refused with the rest of the unknown keys.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from jsonschema import SchemaError
from jsonschema.validators import Draft202012Validator, validator_for

from common.errors import BadRequest

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
# Every multipart part is text: there keep_alive is an integer of seconds or a duration.
KEEP_ALIVE_TEXT_PATTERN = r"^(-?[0-9]{1,9}|-?([0-9]{1,5}(\.[0-9]{1,3})?(ns|us|ms|s|m|h)){1,3})$"
_KEEP_ALIVE = re.compile(KEEP_ALIVE_PATTERN)
_KEEP_ALIVE_INTEGER = re.compile(r"^-?[0-9]{1,9}$")
FORMAT_RULE = 'must be "json" or a JSON Schema object'


class InvalidField(BadRequest):
    """A 400 `bad_request` naming the field; the OpenAI adapter re-words it with its own field name."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field} {rule}")
        self.field = field
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Number:
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
            raise InvalidField(field, f"must be {kind} from {_shown(self.low)} to {_shown(self.high)}")
        return int(value) if self.integer else value


def _shown(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


@dataclass(frozen=True, slots=True)
class StopList:
    """Ollama's `stop` is a []string: a JSON array, never a bare string."""

    def check(self, value: Any, field: str) -> list[str]:
        if (
            not isinstance(value, list)
            or len(value) > MAX_STOP_SEQUENCES
            or not all(isinstance(s, str) and 1 <= len(s) <= MAX_STOP_CHARS for s in value)
        ):
            raise InvalidField(
                field, f"must be a list of at most {MAX_STOP_SEQUENCES} strings of 1 to {MAX_STOP_CHARS} characters"
            )
        return value


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
KEEP_ALIVE_SECONDS = Number(-INT32 - 1, INT32)


def check_option(name: str, value: Any, field: str) -> Any:
    """One allow-listed option, reported as `field` (the OpenAI adapter's own request field names)."""
    return OPTIONS[name].check(value, field)


def check_options(raw: Any) -> dict[str, Any] | None:
    """`options`: a JSON object of allow-listed keys; an empty object is no options."""
    if not isinstance(raw, dict):
        raise BadRequest("options must be a JSON object")
    checked: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in OPTIONS:
            allowed = ", ".join(OPTIONS)
            raise InvalidField(f"options.{name}", f"is not a supported option (supported: {allowed})")
        checked[name] = check_option(name, value, f"options.{name}")
    return checked or None


def check_keep_alive(raw: Any, field: str = "keep_alive") -> int | float | str:
    """Seconds (negative: keep the model loaded for ever, 0: unload after the answer) or a Go duration."""
    return _duration(raw, field) if isinstance(raw, str) else KEEP_ALIVE_SECONDS.check(raw, field)


def keep_alive_from_text(text: str) -> int | str:
    """A multipart part's keep_alive: an integer of seconds, else it must be a duration."""
    return int(text) if _KEEP_ALIVE_INTEGER.fullmatch(text) else _duration(text, "keep_alive")


def _duration(text: str, field: str) -> str:
    if _KEEP_ALIVE.fullmatch(text) is None:  # not match(): $ also matches before a final newline
        raise InvalidField(field, 'must be a number of seconds or a duration such as "5m", "1h30m" or "-1m"')
    return text


def check_format(raw: Any, field: str = "format") -> str | dict[str, Any]:
    """`"json"` (any JSON) or a JSON Schema the answer must follow (checked against its meta-schema)."""
    if raw == "json" and isinstance(raw, str):
        return raw
    if not isinstance(raw, dict):
        raise InvalidField(field, FORMAT_RULE)
    if _depth(raw) > MAX_FORMAT_DEPTH:
        raise InvalidField(field, f"must be nested at most {MAX_FORMAT_DEPTH} levels deep")
    if len(json.dumps(raw, separators=(",", ":"))) > MAX_FORMAT_CHARS:
        raise InvalidField(field, f"must be at most {MAX_FORMAT_CHARS} characters as compact JSON")
    declared = raw.get("$schema")
    checker = validator_for(raw, default=Draft202012Validator) if isinstance(declared, str) else Draft202012Validator
    try:
        checker.check_schema(raw)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        reason = exc.message if len(exc.message) <= 200 else exc.message[:200] + "..."  # it quotes the value
        raise InvalidField(field, f"is not a valid JSON Schema at /{where}: {reason}") from exc
    return raw


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


@dataclass(frozen=True, slots=True)
class OllamaFields:
    """What a chat request asks of Ollama besides the messages; None: not sent (Ollama's default)."""

    format: str | dict[str, Any] | None = None
    keep_alive: int | float | str | None = None
    options: dict[str, Any] | None = None


def parse_ollama_fields(fields: dict[str, Any]) -> OllamaFields:
    """`format`, `keep_alive` and `options` of a /api/stream-message body; absent keys are not sent."""
    return OllamaFields(
        format=check_format(fields["format"]) if "format" in fields else None,
        keep_alive=check_keep_alive(fields["keep_alive"]) if "keep_alive" in fields else None,
        options=check_options(fields["options"]) if "options" in fields else None,
    )


__all__ = [
    "KEEP_ALIVE_PATTERN",
    "KEEP_ALIVE_TEXT_PATTERN",
    "OPTIONS",
    "InvalidField",
    "OllamaFields",
    "check_format",
    "check_keep_alive",
    "check_option",
    "check_options",
    "keep_alive_from_text",
    "parse_ollama_fields",
]
