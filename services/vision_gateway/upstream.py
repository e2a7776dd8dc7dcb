"""What the gateway's two upstream clients (Ollama, the image-store) share.

Every request to an upstream goes through `_open` (or `_exchange`, its context-manager form): its
answer is counted by status in `vision_gateway_upstream_requests_total`, and a broken connection
or a 5xx becomes Retryable. `_call` runs an attempt under the retry policy (or once, for a body
that can be sent only once) and ends failed attempts as the contract's 503. Keeping that in one
base class means a change to how upstream failures are classified happens once, not per call.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import aiohttp

from services.vision_gateway.metrics import GatewayMetrics
from services.vision_gateway.retry import (
    Retryable,
    call_upstream,
    connection_failures_are_retryable,
    retry_after_seconds,
)

T = TypeVar("T")


class UpstreamClient:
    """One upstream over the app's shared ClientSession, with its metrics label and retry budget."""

    label: ClassVar[str]  # the `upstream` label of the gateway's upstream metrics
    unavailable: ClassVar[str]  # how the 503 after the last failed attempt names the upstream

    def __init__(self, session: aiohttp.ClientSession, *, retries: int, metrics: GatewayMetrics) -> None:
        self._session = session
        self._retries = retries
        self._metrics = metrics

    def _count(self, code: int | str) -> None:
        self._metrics.upstream_requests.labels(self.label, str(code)).inc()

    def _connection_failures_are_retryable(
        self, timeout: aiohttp.ClientTimeout | None = None
    ) -> contextlib.AbstractContextManager[None]:
        return connection_failures_are_retryable(lambda: self._count("error"), timeout=timeout)

    async def _call(self, attempt: Callable[[], Awaitable[T]], *, retry: bool = True) -> T:
        """Run `attempt` until it stops raising Retryable or the budget is spent (then 503).

        `retry=False`: one attempt only (a streamed body can be sent once; best-effort work).
        """
        return await call_upstream(
            attempt,
            retries=self._retries if retry else 0,
            on_retry=lambda: self._metrics.retries.labels(self.label).inc(),
            unavailable=self.unavailable,
        )

    async def _open(
        self,
        method: str,
        url: str,
        *,
        relay_server_errors: bool = False,
        **kwargs: Any,
    ) -> aiohttp.ClientResponse:
        """Send one attempt's request: its status counted, a broken connection or a 5xx made Retryable.

        `relay_server_errors`: a 5xx is the upstream's verdict for the caller to pass on, not a
        reason to try again. The caller reads the response and closes it.
        """
        with self._connection_failures_are_retryable(kwargs.get("timeout")):
            response = await self._session.request(method, url, **kwargs)
        self._count(response.status)
        if response.status >= 500 and not relay_server_errors:
            async with response:
                said = await upstream_error(response)
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                reason = f"it answered HTTP {response.status}" + (f" ({said.message})" if said.message else "")
                raise Retryable(reason, detail=said.detail, retry_after=retry_after)
        return response

    @contextlib.asynccontextmanager
    async def _exchange(
        self,
        method: str,
        url: str,
        *,
        relay_server_errors: bool = False,
        **kwargs: Any,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """`_open` for an answer read inside the block, where a connection that breaks is Retryable too.

        The caller sees only answers below 500 (unless relayed) and decides what each means.
        """
        response = await self._open(method, url, relay_server_errors=relay_server_errors, **kwargs)
        async with response:
            with self._connection_failures_are_retryable(kwargs.get("timeout")):
                yield response


@dataclass(frozen=True, slots=True)
class UpstreamText:
    """An upstream's error answer: `message` for a client, `detail` for the log."""

    message: str  # the `error` of its JSON (Ollama's text, the store's message), one line; else ""
    detail: str  # status, path and the body as it came


async def upstream_error(response: aiohttp.ClientResponse) -> UpstreamText:
    """What an upstream said in an error answer. Only the message its JSON gives people is passed on:
    a body that is not that JSON (a proxy's HTML page, a stack trace) stays in the log."""
    try:
        text = (await response.text())[:500]
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
        text = ""
    detail = f"HTTP {response.status} from {response.url.path}" + (f": {text.strip()}" if text.strip() else "")
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        error = error.get("message")
    message = " ".join(error.split())[:300] if isinstance(error, str) else ""
    return UpstreamText(message, detail)
