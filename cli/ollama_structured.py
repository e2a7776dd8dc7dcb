"""What the Ollama emulator answers when a request has `format`: JSON text, as a grammar-bound model writes.

Real Ollama turns `format` into a grammar, so the model can only write JSON (`"json"`) or JSON
matching the schema. The emulator writes a minimal instance of the schema instead: objects with all
their properties (required ones included), the first `const`/`enum`/`anyOf`/`oneOf` choice, arrays
of `minItems` (at least one) items, strings of the reply's words within `minLength`/`maxLength`,
numbers at their lower bound. Keywords it does not know are ignored (an empty schema gives null).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 16


def structured_reply(format_: Any, reply: str) -> str:
    """The JSON text to stream for `format` (spaced like models write it, so it streams as several tokens)."""
    words = re.findall(r"\w+", reply) or ["text"]
    if isinstance(format_, dict):
        return json.dumps(schema_instance(format_, words), ensure_ascii=False)
    return json.dumps({"answer": reply}, ensure_ascii=False)


def schema_instance(schema: Any, words: list[str], depth: int = 0) -> Any:
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return schema_instance(schema[key][0], words, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else None
    if kind == "object":
        return _object(schema, words, depth)
    if kind == "array":
        low, high = _int(schema.get("minItems"), 0), _int(schema.get("maxItems"), 1 << 30)
        count = min(max(low, 1), high)
        return [schema_instance(schema.get("items"), words, depth + 1) for _ in range(count)]
    if kind == "string":
        low, high = _int(schema.get("minLength"), 0), _int(schema.get("maxLength"), 1 << 30)
        text = words[depth % len(words)]
        return (text + "x" * max(0, low - len(text)))[:high]
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    return None


def _object(schema: dict[str, Any], words: list[str], depth: int) -> dict[str, Any]:
    found_properties, found_required = schema.get("properties"), schema.get("required")
    properties: dict[str, Any] = found_properties if isinstance(found_properties, dict) else {}
    required: list[Any] = found_required if isinstance(found_required, list) else []
    names = [*properties, *(r for r in required if isinstance(r, str) and r not in properties)]
    return {
        name: schema_instance(properties.get(name, {}), words[index % len(words) :] or words, depth + 1)
        for index, name in enumerate(names)
    }


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    value: float = 0
    if _is_number(schema.get("minimum")):
        value = schema["minimum"]
    if _is_number(schema.get("exclusiveMinimum")):
        value = schema["exclusiveMinimum"] + (1 if integer else 0.5)
    if _is_number(schema.get("maximum")) and value > schema["maximum"]:
        value = schema["maximum"]
    return math.ceil(value) if integer else float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default
