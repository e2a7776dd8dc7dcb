"""The floor the gateway is measured against: a bare aiohttp relay of Ollama's stream as SSE.

    python -m bench.floor_relay --port P --ollama URL [--store URL --token T]

`POST /api/stream-message` answers with the same SSE events as the gateway (start, one chunk per
content line, done with stats) for the same Ollama request, and nothing else: no database, no
auth, no admission, no metrics, no logging. With `--store`, each image ID is fetched once from the
image-store (as the gateway's bench user) and prepared with the gateway's own function, then
served from a dict: a floor that "checks and caches" the image. Run by bench/floor_bench.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import aiohttp
import orjson
import uvloop
from aiohttp import web

from services.vision_gateway.image_prep import prepare_for_model
from services.vision_gateway.sse import SSE_HEADERS


def sse(event: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


class _HeadersWithFirstEvent(web.StreamResponse):
    _send_headers_immediately = False  # status line, headers and `start` in one send, as the gateway


def create_app(ollama: str, store: str | None, token: str) -> web.Application:
    app, images = web.Application(), dict[str, str]()

    async def image(session: aiohttp.ClientSession, image_id: str) -> str:
        if image_id not in images:
            headers = {"Authorization": f"Bearer {token}", "X-User-Id": "bench"}
            async with session.get(f"{store}/api/images/{image_id}", headers=headers) as response:
                images[image_id] = prepare_for_model(await response.read(), 1024).base64
        return images[image_id]

    async def stream_message(request: web.Request) -> web.StreamResponse:
        received, body, session = time.perf_counter(), orjson.loads(await request.read()), app["session"]
        message: dict[str, Any] = {"role": "user", "content": body["message"]}
        if body.get("image_ids"):
            message["images"] = [await image(session, i) for i in body["image_ids"]]
        payload = orjson.dumps({"model": body["model"], "messages": [message], "stream": True})
        async with session.post(f"{ollama}/api/chat", data=payload) as upstream:
            response = _HeadersWithFirstEvent(headers=SSE_HEADERS)
            await response.prepare(request)
            ids = {k: str(uuid.uuid4()) for k in ("stream_id", "conversation_id", "user_message_id", "message_id")}
            start = {"type": "start", **ids, "model": body["model"], "vision": True}
            await response.write(sse({**start, "image_ids": body.get("image_ids", [])}))
            first, chunks = None, 0
            async for line in upstream.content:
                data = orjson.loads(line)
                if content := data.get("message", {}).get("content"):
                    first, chunks = first or time.perf_counter(), chunks + 1
                    await response.write(sse({"type": "chunk", "content": content}))
                if data.get("done"):
                    stats = {
                        "prompt_tokens": data.get("prompt_eval_count", 0),
                        "completion_tokens": data.get("eval_count", chunks),
                        "time_to_first_token_ms": round((first - received) * 1000, 2) if first else None,
                        "total_duration_ms": round((time.perf_counter() - received) * 1000, 2),
                    }
                    done = {"type": "done", "message_id": ids["message_id"], "done_reason": data.get("done_reason")}
                    await response.write(sse({**done, "stats": stats, "saved": True}))
            await response.write_eof()
            return response

    async def session_ctx(app: web.Application) -> Any:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as app["session"]:
            yield

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/api/stream-message", stream_message)
    app.router.add_get("/readyz", lambda _: web.Response(text="ok"))  # type: ignore[arg-type,return-value]
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ollama", required=True)
    parser.add_argument("--store")
    parser.add_argument("--token", default="")
    args = parser.parse_args()
    # The same loop as the gateway's (EVENT_LOOP), so the comparison is of the code, not the loop.
    loop = uvloop.new_event_loop() if os.environ.get("EVENT_LOOP", "uvloop") == "uvloop" else asyncio.new_event_loop()
    app = create_app(args.ollama, args.store, args.token)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, loop=loop)


if __name__ == "__main__":
    main()
