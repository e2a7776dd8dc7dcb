"""A multipart ask (`POST /api/stream-message` as a form): text parts decoded into the JSON body's
values, image parts forwarded to the image-store through the Ask as they arrive.

Decoding only: every text part becomes the value the JSON body would hold (`think` "true" is
the boolean, `options` is JSON text, ...), and the one request model (chat/request.py) judges
them. The fields sent before the first image are judged before that image moves
(`Ask.check_early`), so a client that puts its text fields first (as `retina ask` and browsers'
FormData in field order do) gets every field refusal before any upload.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from common.content_disposition import parse_form_data_disposition
from common.errors import BadRequest
from common.http.body_timeout import BodyClocks
from common.http.multipart import read_small_field
from services.vision_gateway.chat import Ask

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 32
UPLOAD_CHUNK = 256 * 1024
# A multipart form sends text only: these spellings stand for the JSON booleans.
_FORM_BOOLEANS = {"true": True, "false": False}


def _json_text(text: str) -> Any:
    """A part holding JSON text; what is not JSON is passed on as the text (the rules then refuse it)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def _json_object_text(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadRequest("options must be JSON text") from exc


def _keep_alive(text: str) -> Any:
    """An integer of seconds, else the text (a Go duration, judged by the rules)."""
    digits = text.removeprefix("-")
    return int(text) if digits.isascii() and digits.isdigit() and len(digits) <= 9 else text


# How each text part of the form becomes the value the JSON body would hold.
_FORM_TEXT: dict[str, Callable[[str], Any]] = {
    "message": str,
    "model": str,
    "conversation_id": str,
    "options": _json_object_text,
    "think": lambda text: _FORM_BOOLEANS.get(text, text),
    "format": _json_text,
    "keep_alive": _keep_alive,
}


def _image_ids(text: str) -> list[Any]:
    """One `image_ids` part: a single ID (the part may repeat, as HTML forms and OpenAPI send arrays)
    or, as before, a JSON array of IDs. The IDs themselves are judged by the rules."""
    if not text.lstrip().startswith("["):
        return [text]
    ids = _json_text(text)
    if not isinstance(ids, list):  # not JSON either
        raise BadRequest("image_ids must be a list of image IDs")
    return ids


async def read_ask_form(request: web.Request, ask: Ask, clocks: BodyClocks) -> dict[str, Any]:
    """The form's fields as the JSON body would hold them; uploaded images are in `ask.uploaded`."""
    fields: dict[str, Any] = {}
    try:
        reader = await request.multipart()
        parts = 0
        while (part := await reader.next()) is not None:
            parts += 1
            if parts > MAX_PARTS or isinstance(part, MultipartReader):
                raise BadRequest("too many or nested multipart parts")
            # Not part.name / part.filename: aiohttp's parser splits quoted names at ';'.
            disposition = parse_form_data_disposition(part.headers.get(hdrs.CONTENT_DISPOSITION))
            name = disposition.name or ""
            if name == "images":
                if not ask.uploaded:
                    await _check_before_images(ask, fields, clocks)
                await _upload_part(ask, part, disposition.filename, clocks)
            elif name == "image_ids":
                fields.setdefault("image_ids", []).extend(_image_ids(await read_small_field(part, MAX_FIELD_BYTES)))
            elif name in _FORM_TEXT:
                fields[name] = _FORM_TEXT[name](await read_small_field(part, MAX_FIELD_BYTES))
            else:
                raise BadRequest(f"unexpected multipart field {name!r}" if name else "a multipart part has no name")
    except (ValueError, AssertionError, HttpProcessingError) as exc:
        raise BadRequest("malformed multipart body") from exc
    if ask.uploaded:
        fields["image_ids"] = [*fields.get("image_ids", []), *ask.uploaded_ids]
    return fields


async def _check_before_images(ask: Ask, fields: dict[str, Any], clocks: BodyClocks) -> None:
    """The model lookup may wait on Ollama: that wait is the gateway's, so it must not count against
    the client's body clocks."""
    clocks.pause()
    try:
        await ask.check_early(fields)
    finally:
        clocks.resume()


async def _upload_part(ask: Ask, part: BodyPartReader, filename: str | None, clocks: BodyClocks) -> None:
    """Forward one image part to the image-store as it arrives."""
    content_type = part.headers.get("Content-Type", "application/octet-stream")
    try:
        await ask.upload(_chunks(part, clocks), filename=filename, content_type=content_type)
    finally:
        clocks.resume()


async def _chunks(part: BodyPartReader, clocks: BodyClocks) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(UPLOAD_CHUNK):
        yield chunk
    # The image is forwarded; until the store has checked and stored it, the client's remaining
    # bytes wait in buffers, and that wait must not count as the client being idle or slow.
    clocks.pause()
