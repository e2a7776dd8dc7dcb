"""Server-Sent Events from an aiohttp response, as the JSON objects the gateway sends.

Follows the SSE parsing rules rather than the gateway's exact framing (one `data:` line per event), so
a proxy that re-frames the stream does not break it: `data:` lines are joined with newlines, comments
(`: ping`) and other fields are ignored, an event ends at a blank line. Lines are split by hand from
`iter_any()` because aiohttp's `readline` refuses lines longer than its buffer limit.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import StreamReader


class StreamProtocolError(Exception):
    """The body is not the event stream the contract describes."""


def _event(data_lines: list[str]) -> dict[str, Any]:
    text = "\n".join(data_lines)
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise StreamProtocolError(f"an event is not JSON: {text[:200]!r}") from exc
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise StreamProtocolError(f"an event has no type: {text[:200]!r}")
    return event


async def _lines(content: StreamReader) -> AsyncIterator[str]:
    buffer = b""
    async for data in content.iter_any():
        buffer += data
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.removesuffix(b"\r").decode("utf-8", "replace")
    if buffer:
        yield buffer.decode("utf-8", "replace")


async def events(content: StreamReader) -> AsyncIterator[dict[str, Any]]:
    data_lines: list[str] = []
    async for line in _lines(content):
        if not line:
            if data_lines:
                yield _event(data_lines)
            data_lines = []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            if name == "data":
                data_lines.append(value.removeprefix(" "))
    if data_lines:  # the stream ended without the blank line; the event is still whole
        yield _event(data_lines)
