"""A stand-in gateway for `retina ask`'s own tests: records each request and replays a scripted stream.

The real gateway cannot send `thinking` events or take `think`/`format` yet, and cannot be made to
misbehave on cue (an event stream cut short, events split across packets); this can.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

STREAM_ID = "5b1f3a8e-0f39-4d4a-9b57-3f0a2d0a9c11"
CONVERSATION_ID = "0c9e6c52-7d61-4c3a-bf0e-8d1b1f7a2e44"


def start_event() -> dict[str, Any]:
    return {
        "type": "start",
        "stream_id": STREAM_ID,
        "conversation_id": CONVERSATION_ID,
        "user_message_id": "11111111-1111-4111-8111-111111111111",
        "message_id": "22222222-2222-4222-8222-222222222222",
        "model": "llava",
        "vision": True,
        "image_ids": [],
    }


def done_event(reason: str = "stop", saved: bool = True) -> dict[str, Any]:
    stats = {"prompt_tokens": 1, "completion_tokens": 2, "time_to_first_token_ms": 3.0, "total_duration_ms": 4.0}
    return {
        "type": "done",
        "message_id": start_event()["message_id"],
        "done_reason": reason,
        "stats": stats,
        "saved": saved,
    }


def sse(*events: dict[str, Any]) -> list[bytes]:
    return [f"data: {json.dumps(event)}\n\n".encode() for event in events]


@dataclass
class Part:
    name: str | None
    filename: str | None
    content_type: str | None
    data: bytes


def parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """Split a form-data body by hand: aiohttp's reader warns (unread_data) on some chunk boundaries."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    assert boundary is not None, content_type
    parts = []
    for raw in body.split(b"--" + boundary[1].encode())[1:-1]:
        head, _, data = raw.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        disposition = headers.get("Content-Disposition", "")
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        parts.append(
            Part(name and name[1], filename and filename[1], headers.get("Content-Type"), data.removesuffix(b"\r\n"))
        )
    return parts


@dataclass
class Recorded:
    headers: dict[str, str]
    content_type: str
    json: Any = None
    parts: list[Part] = field(default_factory=list)


@dataclass
class FakeGateway:
    """`writes`: raw byte strings written (each flushed, with `pause` between) after the headers.
    `hold`: after the writes, wait for a stop request, then write `after_stop`."""

    writes: list[bytes] = field(default_factory=list)
    status: int = 200
    error_body: dict[str, Any] | None = None
    extra_headers: dict[str, str] = field(default_factory=dict)
    pause: float = 0.0
    hold: bool = False
    hold_before_headers: bool = False
    after_stop: list[bytes] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/api/stream-message", self._stream)
        app.router.add_post("/api/stream-message/{stream_id}/stop", self._stop)
        return app

    async def _record(self, request: web.Request) -> None:
        recorded = Recorded(dict(request.headers), request.content_type)
        if request.content_type == "application/json":
            recorded.json = await request.json()
        else:
            recorded.parts = parse_multipart(await request.read(), request.headers["Content-Type"])
        self.requests.append(recorded)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if self.hold_before_headers:
            await asyncio.sleep(3600)
        if self.status != 200:
            return web.json_response(self.error_body, status=self.status, headers=self.extra_headers)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for data in self.writes:
            await response.write(data)
            await asyncio.sleep(self.pause)
        if self.hold:
            await self._stopped.wait()
            for data in self.after_stop:
                await response.write(data)
            if not self.after_stop:
                await asyncio.sleep(3600)
        await response.write_eof()
        return response

    async def _stop(self, request: web.Request) -> web.Response:
        self.stops.append(request.match_info["stream_id"])
        self._stopped.set()
        return web.json_response({"stream_id": request.match_info["stream_id"], "stopped": True})
