"""The one reader of JSON request bodies, for every JSON entry of both services.

Every refusal is a 400 `bad_request` (or 413 past `max_bytes`), never a 500: text that is not
JSON or not UTF-8, nesting deeper than the parser goes (json raises RecursionError for a
10,000-level array), and a top-level value that is not an object. A body larger than
PARSE_IN_THREAD_BYTES is parsed in a thread, so megabytes of base64 images do not stall the loop.
Read it under the caller's body clocks (common/http/body_timeout.py) to bound slow clients.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from common.errors import BadRequest, PayloadTooLarge

READ_CHUNK = 1024 * 1024
PARSE_IN_THREAD_BYTES = 256 * 1024


async def read_json_object(request: web.Request, *, max_bytes: int, too_large: str = "") -> dict[str, Any]:
    """The body as a JSON object; 413 `payload_too_large` (with `too_large` as its message) past `max_bytes`."""
    message = too_large or f"the request body is larger than {max_bytes} bytes"
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(message)
    body = bytearray()
    while chunk := await request.content.read(READ_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge(message)
    if len(body) > PARSE_IN_THREAD_BYTES:
        return await asyncio.to_thread(parse_json_object, body)
    return parse_json_object(body)


def parse_json_object(body: bytearray) -> dict[str, Any]:
    """Consumes `body`: its buffer is freed once decoded, before the parser makes its own copies."""
    try:
        text = body.decode("utf-8")
        del body[:]
        value = json.loads(text)
    # RecursionError: nesting deeper than the parser goes is no JSON we can read either.
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest("the body is not valid JSON") from exc
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    return value
