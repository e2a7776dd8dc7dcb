"""A raw-socket HTTP client that sends its body slowly, so the timing is the test's, not a library's.

It sends the request head at once, then part of the body, then one byte per `interval` (or goes
silent), and returns what the server answered once the server closed the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from tests.conftest import SERVICE_TOKEN


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes
    closed_after: float  # seconds from sending the request head to the server closing the socket

    def json(self) -> Any:
        return json.loads(self.body)


def request_head(port: int, path: str, body_length: int, content_type: str, user: str = "alice") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {SERVICE_TOKEN}\r\nX-User-Id: {user}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {body_length}\r\n\r\n"
    ).encode()


Part = tuple[str, bytes, str | None, str | None]


def multipart(parts: list[Part], boundary: str = "slow-boundary") -> tuple[bytes, str]:
    """(name, data, filename, content type) parts as one multipart/form-data body."""
    body = b""
    for name, data, filename, content_type in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if content_type:
            body += f"Content-Type: {content_type}\r\n".encode()
        body += b"\r\n" + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def _trickle(writer: asyncio.StreamWriter, body: bytes, interval: float, chunk: int) -> None:
    with contextlib.suppress(ConnectionError):
        for offset in range(0, len(body), chunk):
            writer.write(body[offset : offset + chunk])
            await writer.drain()
            await asyncio.sleep(interval)


def parse_reply(raw: bytes, closed_after: float) -> RawReply:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return RawReply(int(lines[0].split()[1]), headers, body, closed_after)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


async def slow_post(
    port: int,
    path: str,
    body: bytes,
    content_type: str,
    *,
    send_first: int,
    interval: float | None,
    wait_for_close: float,
    chunk: int = 1,
) -> RawReply:
    """POST `body`: `send_first` bytes at once, then `chunk` bytes per `interval` (None: go silent).

    Fails if the server has not closed the connection `wait_for_close` seconds after the head.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(request_head(port, path, len(body), content_type) + body[:send_first])
    await writer.drain()
    rest = body[send_first:]
    sender = asyncio.create_task(_trickle(writer, rest, interval, chunk) if interval else asyncio.sleep(0))
    try:
        raw = await asyncio.wait_for(reader.read(), wait_for_close)  # read() returns at EOF only
    except TimeoutError:
        raise AssertionError(f"the server still held the connection after {wait_for_close} s") from None
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()
    return parse_reply(raw, time.monotonic() - started)


def assert_timed_out(reply: RawReply, message_part: str) -> None:
    """408 request_timeout as JSON, announced as the connection's last answer."""
    assert reply.status == 408, reply
    assert reply.headers["content-type"].startswith("application/json"), reply.headers
    assert reply.headers.get("connection", "").lower() == "close", reply.headers
    error = reply.json()["error"]
    assert error["code"] == "request_timeout", error
    assert message_part in error["message"], error
