"""The event stream's first bytes: status line, headers and the first event in one send."""

from __future__ import annotations

from unittest import mock

from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import make_mocked_request

from services.vision_gateway.sse import EventStream


async def test_headers_leave_with_the_first_event_in_one_write() -> None:
    sent: list[bytes] = []
    transport = mock.Mock(is_closing=lambda: False, write=sent.append, get_write_buffer_size=lambda: 0)
    protocol = mock.Mock(transport=transport, writing_paused=False)
    writer = StreamWriter(protocol, mock.Mock())
    request = make_mocked_request("POST", "/api/stream-message", writer=writer, protocol=protocol, transport=transport)
    stream = EventStream(heartbeat=None)
    await stream.prepare(request)
    assert sent == [], "nothing is sent before the first event"
    await stream.send({"type": "start", "text": "Grüße"})
    await stream.close()
    assert len(sent) == 1, sent
    head, body = sent[0].split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Type: text/event-stream; charset=utf-8" in head
    assert 'data: {"type":"start","text":"Grüße"}\n\n'.encode() in body, body  # (a chunk of the chunked body)
