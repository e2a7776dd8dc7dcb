"""Sending image bytes once every decision has been made.

aiohttp's FileResponse re-evaluates If-Match, If-None-Match and If-Range against its own
modification-time tag, so a correct `If-Match: "<sha256>"` came back as an empty 412. Here
the handler decides preconditions and the range (services/image_store/http/conditional.py) and
this response only copies the chosen bytes of an already-open file to the socket.

One send path for every size (issue 19): the status line and headers leave in one `send` with
MSG_MORE (the kernel holds them back for the file's first bytes, like nginx's tcp_nopush), then
plain non-blocking `os.sendfile` calls copy the file from the page cache; whatever the socket
does not take at once is left to `loop.sendfile`, which waits for room (and falls back to reads
where sendfile is unavailable). A 145 KiB image used to be read into memory and written with its
headers (two copies in user space); sendfile makes none.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import uuid
from typing import Any, BinaryIO

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import StreamWriter
from aiohttp.web_request import BaseRequest

from services.image_store.filenames import content_disposition
from services.image_store.http.conditional import ByteRange
from services.image_store.models import ImageRow


def image_headers(row: ImageRow, max_age: int, resource_policy: str = "same-site") -> dict[str, str]:
    """Headers of every bytes answer (200, 206 and 304 alike); CORP from IMAGE_CROSS_ORIGIN_RESOURCE_POLICY.

    A fresh dict each time (the handler adjusts it per answer) copied from one built once per
    image: the Content-Disposition encoding was ~3 % of an image GET's CPU.
    """
    fields = (row.id, row.mime_type, row.sha256, row.original_filename, max_age, resource_policy)
    return dict(_image_headers(*fields))


# Distinct images whose headers are kept; beyond that they are built again (an LRU).
HEADER_CACHE_ENTRIES = 4096


@functools.lru_cache(maxsize=HEADER_CACHE_ENTRIES)
def _image_headers(
    image_id: uuid.UUID, mime_type: str, sha256: str, filename: str | None, max_age: int, resource_policy: str
) -> tuple[tuple[str, str], ...]:
    return (
        ("Content-Type", mime_type),
        ("ETag", f'"{sha256}"'),
        ("Accept-Ranges", "bytes"),
        ("Cache-Control", f"private, max-age={max_age}, immutable"),
        ("X-Content-Type-Options", "nosniff"),
        ("Content-Security-Policy", "default-src 'none'; sandbox"),
        ("Cross-Origin-Resource-Policy", resource_policy),
        ("Content-Disposition", content_disposition(filename, fallback=str(image_id))),
    )


# Reads of the fallback path (where the event loop has no sendfile).
CHUNK_BYTES = 256 * 1024


def _plain_socket(transport: asyncio.Transport) -> Any:
    """The transport's socket when bytes may be written to it directly (not TLS, nothing queued)."""
    if transport.is_closing() or transport.get_write_buffer_size() or transport.get_extra_info("sslcontext"):
        return None
    return transport.get_extra_info("socket")


def _take_headers(writer: AbstractStreamWriter) -> bytes | None:
    """The serialized status line and headers aiohttp holds back (`_send_headers_immediately =
    False`) until the first body write, now marked as sent; None if they are not to be had.

    aiohttp (pinned to 3.14) has no public way to hand them over; if that ever changes, the
    headers go out through the writer in a packet of their own, as before.
    """
    headers = getattr(writer, "_headers_buf", None)
    if not isinstance(writer, StreamWriter) or not isinstance(headers, bytes) or writer._headers_written:
        writer.send_headers()
        return None
    writer._headers_buf = None
    writer._headers_written = True
    return headers


def _send_headers(transport: asyncio.Transport, sock: Any, headers: bytes) -> None:
    """Headers with MSG_MORE (on `sock`, from _plain_socket): the kernel sends them with the file's
    first bytes, not alone."""
    sent = 0
    if sock is not None:
        # A socket object on the same descriptor (asyncio hands out a wrapper without send());
        # detach() leaves the descriptor open for the transport.
        raw = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.fileno())
        try:
            sent = raw.send(headers, socket.MSG_MORE)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # the peer went away: the transport finds out and reports it
            pass
        finally:
            raw.detach()
    if sent < len(headers):
        transport.write(headers[sent:])


def _send_now(transport: asyncio.Transport, file: BinaryIO, offset: int, count: int) -> int:
    """Bytes sent by plain non-blocking sendfile calls right now (0 when that is not possible).

    `loop.sendfile` pauses reading, waits for the transport to drain and resumes reading (four
    epoll changes and a future per response) even when the socket takes the whole file at
    once, which it usually does for a chat-sized image. When nothing is queued in the transport
    (the headers went straight out), the file's bytes can follow directly; whatever the socket
    does not take now is left to `loop.sendfile`, which waits for room.
    """
    sock = _plain_socket(transport)
    if sock is None:
        return 0
    sent = 0
    try:
        while sent < count:
            chunk = os.sendfile(sock.fileno(), file.fileno(), offset + sent, count - sent)
            if chunk == 0:  # the file is shorter than announced: _send_rest finds out and cuts the connection
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

    # Headers wait in aiohttp's writer so that they can leave with the body's first bytes.
    _send_headers_immediately = False

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        try:
            writer = await super().prepare(request)
            if request.method == "HEAD" or self._count == 0:
                return writer
            await self._sendfile(request)
            await super().write_eof()
            return writer
        finally:
            # Closing a read-only file does not block; doing it here, not in a thread, means it
            # also happens while the loop's executor shuts down.
            self._file.close()

    async def _sendfile(self, request: BaseRequest) -> None:
        """Headers (held back for the first bytes), then the kernel copies the file to the socket."""
        transport = request.transport
        if transport is None or self._payload_writer is None:
            raise ConnectionResetError("the client went away")
        headers = _take_headers(self._payload_writer)
        if headers is not None:
            _send_headers(transport, _plain_socket(transport), headers)
        sent = _send_now(transport, self._file, self._offset, self._count)
        if sent < self._count:
            await self._send_rest(transport, self._offset + sent, self._count - sent)

    async def _send_rest(self, transport: asyncio.Transport, offset: int, count: int) -> None:
        """What the socket did not take at once: `loop.sendfile` waits for room; uvloop has none
        (NotImplementedError), so there the rest goes in chunks read off the loop, with aiohttp's
        flow control between them."""
        try:
            sent = await asyncio.get_running_loop().sendfile(transport, self._file, offset, count)
        except NotImplementedError:
            pass
        else:
            # asyncio's sendfile stops quietly at the end of the file: a file shorter than the
            # Content-Length sent must cut the connection (the client sees it at once), not end
            # the answer, which would leave the client waiting on a keep-alive connection.
            if sent < count:
                raise ConnectionResetError("the image file is shorter than announced")
            return
        end = offset + count
        while offset < end:
            chunk = await asyncio.to_thread(os.pread, self._file.fileno(), min(CHUNK_BYTES, end - offset), offset)
            if not chunk:
                raise ConnectionResetError("the image file is shorter than announced")
            await super().write(chunk)
            offset += len(chunk)
