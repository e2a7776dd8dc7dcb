"""What the gateway's two upstream clients (Ollama, the image-store) share.

Both count every answer by status in `gateway_upstream_requests_total`, retry connection failures
and 5xx with jittered backoff, and end failed retries as the contract's 503. Keeping that in one
base class means a change to how upstream failures are classified happens once, not per client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
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

    def _connection_failures_are_retryable(self) -> contextlib.AbstractContextManager[None]:
        return connection_failures_are_retryable(lambda: self._count("error"))

    async def _call(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` until it stops raising Retryable or the budget is spent (then 503)."""
        return await call_upstream(
            attempt,
            retries=self._retries,
            on_retry=lambda: self._metrics.retries.labels(self.label).inc(),
            unavailable=self.unavailable,
        )

    @contextlib.asynccontextmanager
    async def _exchange(self, method: str, url: str, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        """One attempt's request: its status counted, a broken connection or a 5xx made Retryable.

        The caller sees only answers below 500 and decides what each of those means.
        """
        with self._connection_failures_are_retryable():
            async with self._session.request(method, url, **kwargs) as response:
                self._count(response.status)
                if response.status >= 500:
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                    raise Retryable(f"HTTP {response.status} from {response.url.path}", retry_after=retry_after)
                yield response
