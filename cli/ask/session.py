"""One `retina ask`: send the request, render the events, and turn Ctrl-C into a stop request.

The first Ctrl-C after the `start` event asks the gateway to stop the stream
(`POST /api/stream-message/{stream_id}/stop`) and keeps reading until the final event, so what the
conversation kept can be reported. Before `start` (still uploading) or on a second Ctrl-C the request
is abandoned: closing the connection is itself a stop to the gateway, just an unreported one.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from typing import Any

import aiohttp

from cli.ask.config import AskConfig
from cli.ask.exits import ExitCode, for_status
from cli.ask.progress import UploadProgress
from cli.ask.render import Renderer
from cli.ask.request import AskRequest, request_body
from cli.ask.sse import StreamProtocolError, events

# After the stop request, how long the final event may take before the connection is dropped.
STOP_GRACE_SECONDS = 15.0
CONNECT_TIMEOUT_SECONDS = 10.0
# The gateway pings an open stream every SSE_HEARTBEAT_SECONDS (15 s by default) and answers an
# upload within its own deadlines, so this much silence means the connection is dead (a vanished
# host, a proxy holding a half-open socket), not a slow model.
SILENCE_TIMEOUT_SECONDS = 120.0


@dataclass
class StreamState:
    stream_id: str | None = None
    conversation_id: str | None = None
    stopping: bool = False
    final: dict[str, Any] | None = None


class AskSession:
    def __init__(
        self,
        config: AskConfig,
        request: AskRequest,
        renderer: Renderer,
        progress: UploadProgress,
        *,
        silence_timeout: float | None = SILENCE_TIMEOUT_SECONDS,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        self.config = config
        self.connect_timeout = connect_timeout
        self.silence_timeout = silence_timeout
        self.request = request
        self.renderer = renderer
        self.progress = progress
        self.state = StreamState()
        self._session: aiohttp.ClientSession | None = None
        self._main: asyncio.Task[Any] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._interrupted = False

    async def run(self) -> ExitCode:
        """Run until the answer ends; SIGINT is handled here, not by KeyboardInterrupt."""
        loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout, sock_read=self.silence_timeout)
        loop.add_signal_handler(signal.SIGINT, self._on_interrupt)
        try:
            async with aiohttp.ClientSession(timeout=timeout, headers=self.config.headers()) as session:
                self._session = session
                return await self._ask(session)
        except asyncio.CancelledError:
            if not self._interrupted or self._main is None:
                raise
            self._main.uncancel()  # our own cancellation, turned into an outcome
            self.progress.finish()
            self.renderer.end_line()
            self.renderer.status("interrupted; the request was abandoned (nothing more is reported)")
            return ExitCode.STOPPED
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            await self._cancel_stop()

    async def _ask(self, session: aiohttp.ClientSession) -> ExitCode:
        keyword, body = request_body(self.request, self.progress)
        try:
            async with session.post(self.config.url("/api/stream-message"), **{keyword: body}) as response:
                self.progress.finish()
                if response.status != 200:
                    return await self._refused(response)
                return await self._relay(response)
        except aiohttp.ClientConnectorError as exc:
            self.progress.finish()
            self.renderer.status(
                f"retina ask: cannot reach the gateway at {self.config.gateway_url}: {exc.os_error}{self._url_hint()}"
            )
            return ExitCode.UNREACHABLE
        except aiohttp.ConnectionTimeoutError:  # a ServerTimeoutError too: it must be caught first
            self.progress.finish()
            self.renderer.status(
                f"retina ask: cannot reach the gateway at {self.config.gateway_url}: "
                f"no connection within {self.connect_timeout:g} s{self._url_hint()}"
            )
            return ExitCode.UNREACHABLE
        except aiohttp.ServerTimeoutError:  # only raised with a silence timeout set (sock_read)
            self.progress.finish()
            self.renderer.end_line()
            waited = f"for {self.silence_timeout:g} s " if self.silence_timeout else ""
            self.renderer.status(
                f"retina ask: the gateway sent nothing {waited}(not even a keep-alive ping); giving up on it"
            )
            return ExitCode.FAILED
        except (aiohttp.ClientError, StreamProtocolError) as exc:
            self.progress.finish()
            self.renderer.end_line()
            self.renderer.status(f"retina ask: the stream broke: {exc or type(exc).__name__}")
            return ExitCode.FAILED

    async def _refused(self, response: aiohttp.ClientResponse) -> ExitCode:
        """A plain HTTP error before any event: print its code and message."""
        try:
            error = (await response.json(content_type=None))["error"]
            code, message = error["code"], error["message"]
        except (ValueError, KeyError, TypeError, aiohttp.ClientError):
            text = " ".join((await response.text(errors="replace")).split())  # one line, even for an HTML page
            code, message = "http_error", text[:300] or response.reason
        line = f"retina ask: {response.status} {code}: {message}"
        if retry_after := response.headers.get("Retry-After"):
            line += f" (retry after {retry_after}s)"
        self.renderer.status(line)
        return for_status(response.status)

    async def _relay(self, response: aiohttp.ClientResponse) -> ExitCode:
        if response.content_type != "text/event-stream":
            raise StreamProtocolError(f"expected text/event-stream, got {response.content_type}")
        async for event in events(response.content):
            if self._handle(event):
                break
        return self._outcome()

    def _url_hint(self) -> str:
        """Where the URL came from, when it is only the default (e.g. run outside the checkout)."""
        return f" ({self.config.url_hint})" if self.config.url_hint else ""

    def _handle(self, event: dict[str, Any]) -> bool:
        """Render one event; True when it is the final one."""
        kind = event["type"]
        if kind == "start":
            self.state.stream_id = event.get("stream_id")
            self.state.conversation_id = event.get("conversation_id")
        elif kind == "chunk":
            self.renderer.chunk(str(event.get("content", "")))
        elif kind == "thinking":
            self.renderer.thinking(str(event.get("content", "")))
        elif kind == "notice":
            self.renderer.status(f"notice ({event.get('code')}): {event.get('message')}")
        elif kind in ("done", "error"):
            self.state.final = event
            return True
        return False  # unknown event types are skipped: the contract may grow

    def _outcome(self) -> ExitCode:
        self.renderer.end_line()
        final, conversation = self.state.final, self.state.conversation_id
        chars = f"{self.renderer.answer_chars} characters"
        if self.renderer.thinking_chars:
            chars += f" (and {self.renderer.thinking_chars} of thinking)"
        if final is None:
            self.renderer.status("retina ask: the stream ended without a final event")
            return ExitCode.FAILED
        kept = "kept in conversation" if final.get("saved", True) else "received, NOT saved; conversation"
        if final["type"] == "error":
            self.renderer.status(f"retina ask: error {final.get('code')}: {final.get('message')}")
            if final.get("partial"):
                self.renderer.status(f"{chars} {kept} {conversation}")
            else:
                self.renderer.status(f"conversation {conversation}")
            return ExitCode.FAILED
        if final.get("done_reason") == "stopped":
            self.renderer.status(f"stopped; {chars} {kept} {conversation}")
            return ExitCode.STOPPED
        if final.get("done_reason") == "length":
            self.renderer.status("the answer reached the model's length limit")
        if not final.get("saved", True):
            self.renderer.status("the answer was NOT saved in the conversation")
        self.renderer.status(f"conversation {conversation}")
        return ExitCode.OK

    def _on_interrupt(self) -> None:
        if self.state.stream_id is None or self.state.stopping or self._session is None:
            self._interrupted = True
            if self._main is not None:
                self._main.cancel()
            return
        self.state.stopping = True
        self.renderer.status("stopping… (Ctrl-C again to quit without waiting)")
        self._stop_task = asyncio.create_task(self._stop(self._session, self.state.stream_id))

    async def _stop(self, session: aiohttp.ClientSession, stream_id: str) -> None:
        url = self.config.url(f"/api/stream-message/{stream_id}/stop")
        try:
            async with session.post(url) as response:
                if response.status != 200:
                    self.renderer.status(f"retina ask: the stop request failed: HTTP {response.status}")
        except aiohttp.ClientError as exc:
            self.renderer.status(f"retina ask: the stop request failed: {exc}")
        # The final event should follow at once; if it does not, give up on it.
        await asyncio.sleep(STOP_GRACE_SECONDS)
        if self.state.final is None and self._main is not None:
            self._interrupted = True
            self._main.cancel()

    async def _cancel_stop(self) -> None:
        if self._stop_task is not None:
            self._stop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stop_task
