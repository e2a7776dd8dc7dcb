"""Server-Sent Events on an aiohttp StreamResponse: one `data: <json>` line per event."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-transform",
    # nginx (and ingress-nginx) would otherwise buffer the stream.
    "X-Accel-Buffering": "no",
}


class SseSink:
    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response

    async def send(self, event: dict[str, Any]) -> None:
        payload = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        await self._response.write(f"data: {payload}\n\n".encode())

    async def ping(self) -> None:
        await self._response.write(b": ping\n\n")
