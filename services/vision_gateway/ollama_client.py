"""Ollama's native API over one aiohttp ClientSession: /api/show, /api/tags, streaming /api/chat.

One OllamaClient per backend, all over the app's one session; each method is one attempt, and
the fleet (services/vision_gateway/fleet/) retries it on this backend or the next. Any NDJSON line
with an `error` key is a failure, whatever the HTTP status (Ollama <= 0.12.5 sends runner errors as
HTTP 200 + an error line). Connection failures and 5xx are Retryable only before the first chunk
has been read; closing the response is what stops Ollama generating.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from common.errors import UnknownModel, UpstreamRejected
from services.vision_gateway.metrics import GatewayMetrics
from services.vision_gateway.retry import Retryable, connection_failure
from services.vision_gateway.upstream import UpstreamClient, upstream_error


class OllamaStreamError(UpstreamRejected):
    """Ollama's answer failed after it began: an error line (its text is Ollama's own message,
    written for people), or a stream that broke, went silent or sent garbage (our sentence). The
    line or the exception behind it is in `detail` or chained, for the log."""

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(" ".join(message.split())[:500], detail=detail)


@dataclass(slots=True)
class ChatChunk:
    content: str = ""
    thinking: str = ""
    done: bool = False
    done_reason: str | None = None
    stats: dict[str, int] = field(default_factory=dict)


def parse_line(line: bytes) -> ChatChunk:
    try:
        data = orjson.loads(line)
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError, invalid UTF-8 included
        raise OllamaStreamError("Ollama sent a line that is not JSON", detail=f"the line: {line[:200]!r}") from exc
    if not isinstance(data, dict):
        raise OllamaStreamError("Ollama sent a JSON value that is not an object", detail=f"the line: {line[:200]!r}")
    if "error" in data:
        error = data["error"]
        said = error if isinstance(error, str) and error.strip() else "Ollama reported an error"
        raise OllamaStreamError(said, detail=f"the line: {line[:300]!r}")
    message = data.get("message") or {}
    chunk = ChatChunk(
        content=str(message.get("content") or ""),
        thinking=str(message.get("thinking") or ""),
        done=bool(data.get("done")),
        done_reason=data.get("done_reason"),
    )
    if chunk.done:
        chunk.stats = {
            key: int(data[key])
            for key in (
                "total_duration",
                "load_duration",
                "prompt_eval_count",
                "prompt_eval_duration",
                "eval_count",
                "eval_duration",
            )
            if isinstance(data.get(key), int | float)
        }
    return chunk


class ChatStream:
    """An open /api/chat response whose first line has already been read; `async for chunk in
    stream` reads the rest, up to and including the done line.

    Its own iterator (a short `__anext__` coroutine per line), not an async generator: a held
    stream waits here for its next line for its whole life, and a suspended async generator would
    be two more objects, a frame and a place in the loop's set of async generators.
    """

    __slots__ = ("_done", "_first", "_on_close", "_response", "backend", "first_chunk_seconds")

    def __init__(self, response: aiohttp.ClientResponse, first: ChatChunk, first_chunk_seconds: float) -> None:
        self._response = response
        self._first: ChatChunk | None = first
        self._done = False  # the done line has been handed out
        self.first_chunk_seconds = first_chunk_seconds
        self.backend = ""  # which Ollama serves it (host:port), set by the fleet
        self._on_close: Callable[[], None] | None = None

    def when_closed(self, callback: Callable[[], None]) -> None:
        """Run `callback` once, on the first close (the fleet counts the backend's streams so)."""
        self._on_close = callback

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> ChatChunk:
        """The next chunk; a broken connection, truncated body, read timeout or bad line is an OllamaStreamError."""
        if self._first is not None:
            chunk, self._first = self._first, None
        elif self._done:
            raise StopAsyncIteration
        else:
            line = b""
            while not line.strip():
                try:
                    line = await self._response.content.readline()
                except TimeoutError as exc:  # sock_read: OLLAMA_READ_TIMEOUT_SECONDS without a byte
                    raise OllamaStreamError("Ollama sent nothing for longer than the read timeout") from exc
                except (aiohttp.ClientError, ConnectionError) as exc:
                    raise OllamaStreamError("the connection to Ollama broke") from exc
                if not line:
                    raise OllamaStreamError("Ollama closed the stream before it was done", detail="no done line")
            chunk = parse_line(line)
        self._done = chunk.done
        return chunk

    def close(self) -> None:
        """Drop the connection: this is what makes Ollama stop generating."""
        self._response.close()
        callback, self._on_close = self._on_close, None
        if callback is not None:
            callback()


class OllamaClient(UpstreamClient):
    label = "ollama"
    unavailable = "Ollama is unavailable"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        retries: int,
        metrics: GatewayMetrics,
        connect_timeout: float,
        read_timeout: float,
        list_timeout: float,
    ) -> None:
        super().__init__(session, retries=retries, metrics=metrics)
        self._base = base_url
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=read_timeout)
        self._short_timeout = aiohttp.ClientTimeout(total=max(30.0, connect_timeout), sock_connect=connect_timeout)
        # A listing is a few bytes from memory: a backend that takes longer is as good as down, and
        # the registry must learn that in seconds, not after a generation's timeout.
        self._list_timeout = aiohttp.ClientTimeout(total=list_timeout, sock_connect=min(connect_timeout, list_timeout))

    async def show(self, model: str) -> dict[str, Any] | None:
        """Model details, or None when Ollama does not have the model. One attempt: the fleet
        (services/vision_gateway/fleet/) retries, on this backend or the next."""
        url = f"{self._base}/api/show"
        async with self._exchange("POST", url, json={"model": model}, timeout=self._short_timeout) as response:
            if response.status == 404:
                return None
            if response.status != 200:
                raise await _refused(response, f"Ollama could not describe the model {model!r}")
            details: dict[str, Any] = await response.json()
            return details

    async def tags(self) -> list[dict[str, Any]]:
        """The installed models (one attempt, within the listing timeout)."""
        return await self._models("/api/tags")

    async def running(self) -> list[dict[str, Any]]:
        """The models loaded in memory now, /api/ps (one attempt, within the listing timeout)."""
        return await self._models("/api/ps")

    async def _models(self, path: str) -> list[dict[str, Any]]:
        async with self._exchange("GET", f"{self._base}{path}", timeout=self._list_timeout) as response:
            if response.status != 200:
                raise await _refused(response, f"Ollama could not list its models ({path})")
            body = await response.json()
            models = body.get("models") if isinstance(body, dict) else None
            if not isinstance(models, list | None):
                raise ValueError(f"{path} answered `models` that is not a list")
            return [entry for entry in models or [] if isinstance(entry, dict)]

    async def open_chat(self, payload: dict[str, Any], *, request_id: str = "") -> ChatStream:
        """Send the chat request and read its first line. One attempt: a failure before the first
        line is Retryable, and the fleet tries again (here or on the next backend)."""
        body = orjson.dumps({**payload, "stream": True})
        headers = {"Content-Type": "application/json"}
        if request_id:
            headers["X-Request-ID"] = request_id
        started = time.perf_counter()
        # Not _exchange: the response stays open after the attempt, as the ChatStream.
        response = await self._open("POST", f"{self._base}/api/chat", data=body, headers=headers, timeout=self._timeout)
        try:
            if response.status == 404:
                raise UnknownModel(f"Ollama does not have the model {payload.get('model')!r}")
            if response.status != 200:
                raise await _refused(response, "Ollama refused the request")
            try:
                line = await response.content.readline()
                while line is not None and line.strip() == b"" and not response.content.at_eof():
                    line = await response.content.readline()
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                raise Retryable(connection_failure(exc)) from exc
            if not line.strip():
                raise Retryable("it ended its answer before the first chunk")
            first = parse_line(line)  # an error line raises OllamaStreamError (not retried)
            return ChatStream(response, first, time.perf_counter() - started)
        except BaseException:
            response.close()
            raise


async def _refused(response: aiohttp.ClientResponse, what: str) -> UpstreamRejected:
    """Ollama's refusal (a 4xx): its own message, if its JSON gave one, else the status."""
    said = await upstream_error(response)
    message = f"{what}: {said.message}" if said.message else f"{what} (HTTP {response.status})"
    return UpstreamRejected(message, detail=said.detail)
