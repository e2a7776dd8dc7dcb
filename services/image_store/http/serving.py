"""Sending image bytes once every decision has been made.

aiohttp's FileResponse re-evaluates If-Match, If-None-Match and If-Range against its own
modification-time tag, so a correct `If-Match: "<sha256>"` came back as an empty 412. Here
the handler decides preconditions and the range (services/image_store/http/conditional.py) and
this response only copies the chosen bytes of an already-open file to the socket with
sendfile (asyncio falls back to reads in a thread where sendfile is unavailable).
"""

from __future__ import annotations

import asyncio
import os
from typing import BinaryIO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_request import BaseRequest

from services.image_store.filenames import content_disposition
from services.image_store.http.conditional import ByteRange
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


# Read into memory and sent with the headers in one write up to this size (a file of up to
# this much is held once per request in flight; larger ones go through sendfile).
SMALL_FILE_BYTES = 256 * 1024


def _send_now(transport: asyncio.Transport, file: BinaryIO, offset: int, count: int) -> int:
    """Bytes sent by plain non-blocking sendfile calls right now (0 when that is not possible).

    `loop.sendfile` pauses reading, waits for the transport to drain and resumes reading (four
    epoll changes and a future per response) even when the socket takes the whole file at
    once, which it usually does for a small image. When nothing is queued in the transport
    (the headers went straight out), the file's bytes can follow directly; whatever the socket
    does not take now is left to `loop.sendfile`, which waits for room.
    """
    sock = transport.get_extra_info("socket")
    if sock is None or transport.get_write_buffer_size() or transport.is_closing():
        return 0
    sent = 0
    try:
        while sent < count:
            chunk = os.sendfile(sock.fileno(), file.fileno(), offset + sent, count - sent)
            if chunk == 0:  # the file is shorter than announced: let loop.sendfile report it
                break
            sent += chunk
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:  # sendfile unsupported here, or the peer went away: the fallback decides
        pass
    return sent


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

    # Headers wait in aiohttp's writer so that a small body leaves in the same system call.
    _send_headers_immediately = False

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        try:
            writer = await super().prepare(request)
            if request.method == "HEAD" or self._count == 0:
                return writer
            if self._count <= SMALL_FILE_BYTES:
                # One pread and one write of headers + body: cheaper than a header packet
                # followed by sendfile's bookkeeping, for the sizes most chat images have.
                await super().write(os.pread(self._file.fileno(), self._count, self._offset))
            else:
                await self._sendfile(request)
            await super().write_eof()
            return writer
        finally:
            # Closing a read-only file does not block; doing it here, not in a thread, means it
            # also happens while the loop's executor shuts down.
            self._file.close()

    async def _sendfile(self, request: BaseRequest) -> None:
        """Larger files: headers first, then the kernel copies the file to the socket."""
        transport = request.transport
        if transport is None or self._payload_writer is None:
            raise ConnectionResetError("the client went away")
        self._payload_writer.send_headers()
        sent = _send_now(transport, self._file, self._offset, self._count)
        if sent < self._count:
            await asyncio.get_running_loop().sendfile(transport, self._file, self._offset + sent, self._count - sent)
