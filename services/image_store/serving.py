"""Sending image bytes once every decision has been made.

aiohttp's FileResponse re-evaluates If-Match, If-None-Match and If-Range against its own
modification-time tag, so a correct `If-Match: "<sha256>"` came back as an empty 412. Here
the handler decides preconditions and the range (services/image_store/conditional.py) and
this response only copies the chosen bytes of an already-open file to the socket with
sendfile (asyncio falls back to reads in a thread where sendfile is unavailable).
"""

from __future__ import annotations

import asyncio
from typing import BinaryIO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_request import BaseRequest

from services.image_store.conditional import ByteRange
from services.image_store.filenames import content_disposition
from services.image_store.models import ImageRow


def image_headers(row: ImageRow, max_age: int, resource_policy: str = "same-site") -> dict[str, str]:
    """Headers of every bytes answer (200, 206 and 304 alike); CORP from IMAGE_CROSS_ORIGIN_RESOURCE_POLICY."""
    return {
        "Content-Type": row.mime_type,
        "ETag": f'"{row.sha256}"',
        "Accept-Ranges": "bytes",
        "Cache-Control": f"private, max-age={max_age}, immutable",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cross-Origin-Resource-Policy": resource_policy,
        "Content-Disposition": content_disposition(row.original_filename, fallback=str(row.id)),
    }


class ImageBytesResponse(web.StreamResponse):
    """200 with the whole file or 206 with one range; owns `file` and closes it when done."""

    def __init__(self, file: BinaryIO, size: int, byte_range: ByteRange | None, headers: dict[str, str]) -> None:
        super().__init__(status=200 if byte_range is None else 206, headers=headers)
        self._file = file
        self._offset = 0 if byte_range is None else byte_range.start
        self._count = size if byte_range is None else byte_range.length
        if byte_range is not None:
            self.headers["Content-Range"] = byte_range.content_range
        self.content_length = self._count

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        try:
            writer = await super().prepare(request)
            if request.method == "HEAD" or self._count == 0:
                return writer
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("the client went away")
            await asyncio.get_running_loop().sendfile(transport, self._file, self._offset, self._count)
            await super().write_eof()
            return writer
        finally:
            # Closing a read-only file does not block; doing it here, not in a thread, means it
            # also happens while the loop's executor shuts down.
            self._file.close()
