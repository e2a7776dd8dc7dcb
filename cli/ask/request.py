"""The body of `POST /api/stream-message` for one `retina ask`.

Without images the body is JSON (the contract's canonical form, where `think` and `format` keep their
JSON types). With images it is multipart: each file becomes an `images` part streamed from disk in
chunks (never read whole into memory) while the gateway forwards it to the image-store; the other
fields are text parts, as a form or `curl -F` sends them (`think=high`, `format=json`, a schema as its
JSON text).
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import payload

from cli.ask.progress import UploadProgress

CHUNK_BYTES = 256 * 1024
# The gateway's `think` levels (services/vision_gateway/chat/request.py THINK_LEVELS; a test keeps them
# equal). Not imported: that package pulls the whole gateway into a command-line start.
THINK_LEVELS = ("low", "medium", "high", "max")
# What a bare `--think` and the spelled-out switches mean.
THINK_WORDS: dict[str, bool | str] = {"true": True, "on": True, "false": False, "off": False}

Think = bool | str
Format = str | dict[str, Any]


class FormatFileError(ValueError):
    """--format named a file that is not a JSON schema object."""


@dataclass(frozen=True, slots=True)
class AskRequest:
    message: str
    model: str
    images: list[Path] = field(default_factory=list)
    conversation_id: str | None = None
    think: Think | None = None
    format: Format | None = None

    def fields(self) -> dict[str, Any]:
        """The non-file fields, with their JSON types."""
        body: dict[str, Any] = {"message": self.message, "model": self.model}
        if self.conversation_id is not None:
            body["conversation_id"] = self.conversation_id
        if self.think is not None:
            body["think"] = self.think
        if self.format is not None:
            body["format"] = self.format
        return body

    def upload_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.images)


def parse_think(value: str) -> Think:
    """A level (`low|medium|high|max`), or on/off spelled true/false/on/off."""
    lowered = value.strip().lower()
    if lowered in THINK_LEVELS:
        return lowered
    if lowered in THINK_WORDS:
        return THINK_WORDS[lowered]
    raise ValueError(f"--think takes {', '.join(THINK_LEVELS)}, true or false, not {value!r}")


def load_format(value: str) -> Format:
    """`json`, or the path of a file holding a JSON schema (an object)."""
    if value == "json":
        return "json"
    path = Path(value)
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FormatFileError(f"cannot read the schema file {value!r}: {exc.strerror}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatFileError(f"{value!r} is not JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise FormatFileError(f"{value!r} must hold a JSON schema object")
    return schema


def _form_text(value: Any) -> str:
    """A field as a form part's text: strings as they are, booleans and schemas as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


async def _file_chunks(path: Path, progress: UploadProgress, last: bool) -> AsyncIterator[bytes]:
    progress.file(path.name)
    with path.open("rb") as source:
        while chunk := await asyncio.to_thread(source.read, CHUNK_BYTES):
            progress.advance(len(chunk))
            yield chunk
    if last:
        progress.finish()


def request_body(request: AskRequest, progress: UploadProgress) -> tuple[str, Any]:
    """(keyword for aiohttp's `post`, value): `json` without images, `data` (multipart) with them."""
    if not request.images:
        return "json", request.fields()
    writer = aiohttp.MultipartWriter("form-data")
    for name, value in request.fields().items():
        part = writer.append(_form_text(value))
        part.set_content_disposition("form-data", name=name)
    for index, path in enumerate(request.images):
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        chunks = _file_chunks(path, progress, last=index == len(request.images) - 1)
        file_part = payload.AsyncIterablePayload(chunks, content_type=content_type)
        file_part.set_content_disposition("form-data", name="images", filename=path.name)
        writer.append_payload(file_part)
    return "data", writer
