"""OllamaFleet: the gateway's one way to Ollama, over one backend or many.

It answers the model questions (who has this model; describe it) and opens chats: it routes the
ask (routing.py), counts the backend's streams while they are open, and retries a failure before
the first token on the next candidate with the gateway's one retry policy (retry.call_upstream,
UPSTREAM_RETRIES more attempts than there are candidates), invisibly to the client. After the first
token nothing here is involved: the stream's own error path applies. With one backend this is the
old behaviour (the same backend retried, then 503 upstream_unavailable).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from common.errors import UnknownModel, UpstreamRejected, UpstreamUnavailable
from services.vision_gateway.fleet import routing
from services.vision_gateway.fleet.affinity import Affinity
from services.vision_gateway.fleet.backend import Backend, model_key
from services.vision_gateway.fleet.metrics import FleetMetrics
from services.vision_gateway.fleet.registry import BackendRegistry
from services.vision_gateway.metrics import GatewayMetrics
from services.vision_gateway.ollama_client import ChatStream
from services.vision_gateway.retry import Retryable, call_upstream, could_not_connect

T = TypeVar("T")

UNAVAILABLE = "Ollama is unavailable"


class OllamaFleet:
    def __init__(
        self, registry: BackendRegistry, metrics: GatewayMetrics, *, retries: int, affinity: Affinity | None = None
    ) -> None:
        self.registry = registry
        self._metrics = metrics
        self._fleet_metrics: FleetMetrics = metrics.fleet
        self._retries = retries
        self._affinity = affinity if affinity is not None else Affinity()
        self._turns = itertools.count()
        self._counts: dict[Backend, _StreamCount] = {}

    # ---- models -----------------------------------------------------------------------------------

    async def holders(self, model: str) -> list[Backend]:
        """The backends that list `model` (refreshing them all once if none does, at most once a second,
        until one that is up has it).

        UnknownModel when every backend has listed its models and none has it; 503 when some
        backend could not say (it is down or never answered), or all that have it are down.
        """
        found = self.registry.holders(model)
        if not found:
            await self.registry.refresh_on_demand(until=lambda: any(b.up for b in self.registry.holders(model)))
            found = self.registry.holders(model)
        if not found and self.registry.all_listed():
            raise UnknownModel(f"model {model!r} is not available on the Ollama server")
        if not any(backend.up for backend in found):
            raise self._unavailable(found or [b for b in self.registry.backends if not b.listed])
        return found

    async def show(self, model: str, candidates: Sequence[Backend]) -> dict[str, Any] | None:
        """/api/show of `model` from one of `candidates` (None: that backend no longer has it)."""
        return await self._across(list(candidates), lambda backend: backend.client.show(model))

    async def model_names(self) -> list[str]:
        """Every model some backend lists, each once (as the first backend listing it names it)."""
        if not self.registry.all_listed():
            await self.registry.refresh_on_demand(until=self.registry.all_listed)
        if not any(backend.listed for backend in self.registry.backends):
            raise self._unavailable(list(self.registry.backends))
        names: dict[str, str] = {}
        for backend in self.registry.backends:
            for key, name in backend.names.items():
                names.setdefault(key, name)
        return list(names.values())

    # ---- chats ------------------------------------------------------------------------------------

    async def open_chat(
        self, payload: dict[str, Any], *, request_id: str = "", conversation_id: uuid.UUID | None = None
    ) -> ChatStream:
        """Route the ask, send it, read its first line; fail over to the next candidate until then."""
        model = str(payload.get("model") or "")
        key = model_key(model)
        candidates = [backend for backend in await self.holders(model) if backend.up]
        options = [routing.Option(b.label, key in b.loaded, b.in_flight) for b in candidates]
        route = routing.route(options, affinity=self._affinity.backend(conversation_id), turn=next(self._turns))
        self._fleet_metrics.decisions.labels(route.order[0], route.decision).inc()
        ordered = [self.registry.get(label) for label in route.order]
        return await self._across(ordered, lambda backend: self._open_on(backend, key, payload, request_id))

    def remember(self, conversation_id: uuid.UUID, backend: str | None) -> None:
        """The backend that served this conversation's turn: its next turn goes there if it can."""
        if backend:
            self._affinity.remember(conversation_id, backend)

    async def _open_on(self, backend: Backend, key: str, payload: dict[str, Any], request_id: str) -> ChatStream:
        count = self._counts.get(backend)
        if count is None:
            count = self._counts[backend] = _StreamCount(backend, self._fleet_metrics)
        count.opened()  # counted from the choice on, so a burst of asks spreads out
        release = count.closed
        try:
            stream = await backend.client.open_chat(payload, request_id=request_id)
        except UnknownModel:
            release()
            backend.names.pop(key, None)  # removed since the last listing
            if any(b.up and b.has(key) for b in self.registry.backends):
                raise Retryable("it no longer has the model") from None
            raise
        except BaseException:
            release()
            raise
        self._fleet_metrics.requests.labels(backend.label, "opened").inc()
        backend.loaded.add(key)  # it is now, whatever /api/ps said a moment ago
        stream.backend = backend.label
        stream.when_closed(release)
        return stream

    # ---- the retry across backends ---------------------------------------------------------------

    async def _across(self, candidates: list[Backend], attempt: Callable[[Backend], Awaitable[T]]) -> T:
        """`attempt` on the first candidate, then (on a Retryable failure) the next one up, cycling,
        under the one retry policy. A connect failure marks the backend down."""
        tried: list[Backend] = []

        async def one() -> T:
            backend = self._next(candidates, tried)
            if tried and backend is not tried[-1]:
                self._fleet_metrics.decisions.labels(backend.label, "failover").inc()
            tried.append(backend)
            try:
                return await attempt(backend)
            except Retryable as exc:
                down = could_not_connect(exc)
                self._fleet_metrics.requests.labels(backend.label, "connect_failed" if down else "failed").inc()
                if down:
                    self.registry.mark_down(backend, exc.reason, exc)
                raise
            except (UpstreamRejected, UnknownModel):
                self._fleet_metrics.requests.labels(backend.label, "refused").inc()
                raise

        return await call_upstream(
            one,
            retries=self._retries + len(candidates) - 1,
            on_retry=lambda: self._metrics.retries.labels("ollama").inc(),
            unavailable=UNAVAILABLE,
        )

    def _next(self, candidates: list[Backend], tried: list[Backend]) -> Backend:
        """The candidate after the last one tried that is still up; 503 when none is."""
        start = candidates.index(tried[-1]) + 1 if tried else 0
        for offset in range(len(candidates)):
            backend = candidates[(start + offset) % len(candidates)]
            if backend.up:
                return backend
        raise self._unavailable(candidates)

    def _unavailable(self, backends: Sequence[Backend]) -> UpstreamUnavailable:
        """503 upstream_unavailable, saying why the first of `backends` that failed did, with the
        Retry-After of the first of their cooldowns to end."""
        failed = next((b for b in backends if b.failure), None)
        reason = failed.failure if failed is not None else "no server that has the model answers"
        detail = f"{failed.label}: {failed.failure_detail}" if failed is not None else None
        retry_after = self.registry.retry_after(backends)
        return UpstreamUnavailable(f"{UNAVAILABLE}: {reason}", retry_after=retry_after, detail=detail)


class _StreamCount:
    """A backend's streams in flight, in its `in_flight` and the gauge. One per backend: a stream
    holds only the bound `closed` until it closes (a closure would be a function and two cells)."""

    __slots__ = ("_backend", "_gauge")

    def __init__(self, backend: Backend, metrics: FleetMetrics) -> None:
        self._backend = backend
        self._gauge = metrics.in_flight.labels(backend.label)

    def opened(self) -> None:
        self._backend.in_flight += 1
        self._gauge.inc()

    def closed(self) -> None:
        self._backend.in_flight -= 1
        self._gauge.dec()
