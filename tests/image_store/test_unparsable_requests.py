"""A request aiohttp cannot parse is the client's fault: a 400, and no error-level log with a traceback.

schemathesis probes every server with a NUL byte in a header (`X-Schemathesis-Probe-Null`); aiohttp's
parser refuses it before any handler runs and used to log "Error handling request" at ERROR with a
traceback, so any stranger could fill error logs and trip alerts.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

import pytest

UNPARSABLE = [
    pytest.param(
        b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Probe-Null: \x00\r\n\r\n", b"Invalid header value char", id="nul"
    ),
    pytest.param(
        b"GET /livez HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", b"Invalid header token", id="space-in-name"
    ),
]


def _exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(raw)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize(("raw", "reason"), UNPARSABLE)
async def test_an_unparsable_request_is_a_400_and_a_warning_without_traceback(
    raw: bytes,
    reason: bytes,
    settings_for: Callable[..., Any],
    store_app: Any,
    aiohttp_server: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await aiohttp_server(store_app(settings_for()))
    with caplog.at_level(logging.INFO, logger="aiohttp.server"):
        answer = await asyncio.to_thread(_exchange, server.port, raw)
        await asyncio.sleep(0.05)
    assert answer.startswith(b"HTTP/1.0 400 Bad Request\r\n") or answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), (
        answer
    )
    assert reason in answer
    records = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert [r.levelname for r in records] == ["WARNING"], [(r.levelname, r.getMessage()) for r in records]
    assert records[0].exc_info is None
    assert "unparsable request (400)" in records[0].getMessage()
    assert reason.decode() in records[0].getMessage()
    # The server still answers properly formed requests on a new connection.
    fine = await asyncio.to_thread(
        _exchange, server.port, b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert fine.startswith(b"HTTP/1.1 200 OK"), fine
