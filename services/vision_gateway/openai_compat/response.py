"""Retina's typed stream events in OpenAI's shapes: `chat.completion.chunk` SSE, one `chat.completion`, errors.

Both sinks receive exactly what an SSE client of /api/stream-message receives (chat/events.py)
and translate; neither knows Ollama or the database. Notices have no place in OpenAI's format:
the handler sends them as the `X-Retina-Notices` header, known before the first byte.
"""

from __future__ import annotations

import time
from typing import Any

from common.errors import ApiError
from services.vision_gateway.chat import events
from services.vision_gateway.sse import EventStream

# OpenAI's `error.type` for a status; anything 5xx is the server's fault.
_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}
# Which request field a retina error code is about, when the error does not say it itself.
_PARAM_OF_CODE = {
    "unknown_model": "model",
    "model_not_vision_capable": "model",
    "model_cannot_think": "reasoning_effort",
    "too_many_images": "messages",
}
# Status for a stream that failed after it began, when the client asked for one JSON answer.
_STATUS_OF_STREAM_ERROR = {"shutting_down": 503, "internal_error": 500}


def openai_error(error: ApiError) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}`; `code` keeps retina's stable code."""
    kind = "server_error" if error.status >= 500 else _ERROR_TYPES.get(error.status, "invalid_request_error")
    param = error.details.get("param", _PARAM_OF_CODE.get(error.code))
    return {"error": {"message": error.message, "type": kind, "param": param, "code": error.code}}


def _finish_reason(done_reason: str) -> str:
    return "length" if done_reason == "length" else "stop"


def _usage(stats: dict[str, Any]) -> dict[str, int]:
    prompt, completion = int(stats.get("prompt_tokens") or 0), int(stats.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _Identity:
    """The completion's ID (from the answer's message ID), model and creation time, set by `start`."""

    def __init__(self) -> None:
        self.id = ""
        self.model = ""
        self.created = int(time.time())

    def take(self, start: events.StartEvent) -> None:
        self.id = f"chatcmpl-{start['message_id']}"
        self.model = start["model"]


class ChunkStream:
    """An EventSink writing `data: {chat.completion.chunk}` lines, then `data: [DONE]`."""

    def __init__(self, stream: EventStream, *, include_usage: bool) -> None:
        self._stream = stream
        self._include_usage = include_usage
        self._identity = _Identity()

    async def send(self, event: events.Event) -> None:
        if event["type"] == "start":
            self._identity.take(event)
            await self._chunk({"role": "assistant", "content": ""})
        elif event["type"] == "chunk":
            await self._chunk({"content": event["content"]})
        elif event["type"] == "thinking":  # where Ollama's own /v1 puts it (OpenAI's API has no such field)
            await self._chunk({"reasoning": event["content"]})
        elif event["type"] == "done":
            await self._chunk({}, finish_reason=_finish_reason(event["done_reason"]))
            if self._include_usage:
                await self._stream.send({**self._envelope(), "choices": [], "usage": _usage(event["stats"])})
            await self._stream.send_data("[DONE]")
        elif event["type"] == "error":
            # The official clients raise APIError on a chunk carrying `error`.
            status = _STATUS_OF_STREAM_ERROR.get(event["code"], 502)
            await self._stream.send(openai_error(ApiError(event["message"], status=status, code=event["code"])))
            await self._stream.send_data("[DONE]")

    def _envelope(self) -> dict[str, Any]:
        identity = self._identity
        return {
            "id": identity.id,
            "object": "chat.completion.chunk",
            "created": identity.created,
            "model": identity.model,
            "system_fingerprint": None,
        }

    async def _chunk(self, delta: dict[str, Any], *, finish_reason: str | None = None) -> None:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        await self._stream.send({**self._envelope(), "choices": [choice]})


class CompletionCollector:
    """An EventSink that gathers the whole answer for `stream: false`."""

    def __init__(self) -> None:
        self._identity = _Identity()
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._final: events.DoneEvent | events.ErrorEvent | None = None

    async def send(self, event: events.Event) -> None:
        if event["type"] == "start":
            self._identity.take(event)
        elif event["type"] == "chunk":
            self._content.append(event["content"])
        elif event["type"] == "thinking":
            self._reasoning.append(event["content"])
        elif event["type"] in ("done", "error"):
            self._final = event

    def completion(self) -> dict[str, Any]:
        """The `chat.completion` body; an ApiError if the answer failed (its partial text is stored)."""
        final = self._final
        if final is None or final["type"] == "error":
            code = final["code"] if final else "internal_error"
            message = final["message"] if final else "the answer ended without a result"
            raise ApiError(message, status=_STATUS_OF_STREAM_ERROR.get(code, 502), code=code)
        reply = {"role": "assistant", "content": "".join(self._content), "refusal": None}
        if self._reasoning:
            reply["reasoning"] = "".join(self._reasoning)
        return {
            "id": self._identity.id,
            "object": "chat.completion",
            "created": self._identity.created,
            "model": self._identity.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": reply,
                    "logprobs": None,
                    "finish_reason": _finish_reason(final["done_reason"]),
                }
            ],
            "usage": _usage(final["stats"]),
        }
