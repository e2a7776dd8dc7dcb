"""BackendRegistry: what each Ollama backend has and whether it is up, kept fresh in the background.

Every OLLAMA_REFRESH_SECONDS each backend that is up is asked for its models (/api/tags) and its
loaded models (/api/ps); `refresh_on_demand()` does the same at once when an ask names a model no
backend lists (concurrent callers share each backend's refresh, and a new one starts at most once per
ON_DEMAND_REFRESH_SECONDS: a flood of asks for unknown models costs each backend one listing per
second, not one per ask). Each backend is refreshed on its own (its own loop, its own single flight,
each listing bounded by OLLAMA_LIST_TIMEOUT_SECONDS): a backend that accepts connections and never
answers costs only itself, not the other backends' refreshes or the asks for their models.
A backend that refuses or times out a connection, here or for an ask, or does not list its models in
time, is marked down for OLLAMA_BACKEND_COOLDOWN_SECONDS: no asks go to it, and when the cooldown ends
its loop probes it (the same refresh); it is up again once the probe answers, or down for another
cooldown.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence

import aiohttp
import structlog

from common.errors import ApiError
from common.failures import failure_detail
from common.singleflight import SingleFlight
from services.vision_gateway.fleet.backend import Backend, model_key
from services.vision_gateway.fleet.metrics import FleetMetrics
from services.vision_gateway.retry import Retryable, could_not_connect

log = structlog.get_logger("retina.vision_gateway.fleet")

# At most one on-demand refresh starts per this many seconds (joining one under way is free).
ON_DEMAND_REFRESH_SECONDS = 1.0
# Listings in a row without an answer in OLLAMA_LIST_TIMEOUT_SECONDS that mark a backend which has
# listed before down (one that never listed is down at the first).
LISTING_TIMEOUTS_DOWN = 2


class BackendRegistry:
    def __init__(
        self,
        backends: Sequence[Backend],
        metrics: FleetMetrics,
        *,
        refresh_seconds: float,
        cooldown_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        on_demand_seconds: float = ON_DEMAND_REFRESH_SECONDS,
    ) -> None:
        self.backends = tuple(backends)
        self._by_label = {backend.label: backend for backend in self.backends}
        self._metrics = metrics
        self._refresh_seconds = refresh_seconds
        self._cooldown = cooldown_seconds
        self._clock = clock
        self._flights: SingleFlight[str, None] = SingleFlight()  # one refresh per backend label at a time
        self._on_demand_seconds = on_demand_seconds
        self._on_demand_at: float | None = None  # when the last on-demand refresh started
        # Set when a backend goes down: its loop plans its probe.
        self._wakes = {backend.label: asyncio.Event() for backend in self.backends}
        for backend in self.backends:
            metrics.add_backend(backend.label)

    def get(self, label: str) -> Backend:
        return self._by_label[label]

    def holders(self, model: str) -> list[Backend]:
        """Backends whose last listing has `model`, up or not, in configured order."""
        key = model_key(model)
        return [backend for backend in self.backends if backend.has(key)]

    def all_listed(self) -> bool:
        """Every backend has answered /api/tags at least once (so a model none lists is unknown)."""
        return all(backend.listed for backend in self.backends)

    def retry_after(self, backends: Sequence[Backend]) -> int:
        """Seconds until the first cooldown among `backends` ends (one of them is probed again), at
        least 1. Only those that could serve the ask count: another backend's return changes nothing."""
        ends = [b.down_until for b in backends if b.down_until is not None]
        return max(1, math.ceil(min(ends) - self._clock())) if ends else 1

    def mark_down(self, backend: Backend, reason: str, failure: BaseException | None = None) -> None:
        if backend.up:
            log.warning("ollama_backend_down", backend=backend.label, reason=reason)
        backend.down_at = self._clock()
        backend.down_until = backend.down_at + self._cooldown
        self._failed(backend, reason, failure)
        self._metrics.up.labels(backend.label).set(0)
        self._wakes[backend.label].set()

    def _mark_up(self, backend: Backend) -> None:
        if not backend.up:
            log.info("ollama_backend_up", backend=backend.label)
        backend.down_until = None
        self._failed(backend, "", None)
        self._metrics.up.labels(backend.label).set(1)

    async def refresh(self) -> None:
        """Refresh every backend that is up or due for its probe, now (joining refreshes under way)."""
        await asyncio.gather(*(self._refresh_once(backend) for backend in self._due()))

    async def refresh_on_demand(self, until: Callable[[], bool] = lambda: False) -> None:
        """`refresh()` for an ask whose model no backend lists, returning as soon as `until()` holds
        (the model is found: a backend slow to answer keeps its refresh, not the ask). It starts
        a refresh only if the last on-demand one started ON_DEMAND_REFRESH_SECONDS ago or more; else
        it joins the refreshes under way, if any (the listings are that fresh)."""
        due = self._due()
        now = self._clock()
        if self._on_demand_at is None or now - self._on_demand_at >= self._on_demand_seconds:
            self._on_demand_at = now
        else:
            due = [backend for backend in due if backend.label in self._flights]
        waiting = {asyncio.ensure_future(self._refresh_once(backend)) for backend in due}
        try:
            while waiting and not until():
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for flight in done:
                    flight.result()  # a failure the refresh did not expect is not swallowed here
        finally:
            for flight in waiting:
                flight.cancel()  # leaves only this wait: the refresh itself goes on (SingleFlight shields it)

    def _due(self) -> list[Backend]:
        """The backends a refresh asks: those up, and those whose cooldown has ended (their probe)."""
        now = self._clock()
        return [b for b in self.backends if b.down_until is None or b.down_until <= now]

    async def _refresh_once(self, backend: Backend) -> None:
        """Refresh `backend`, or join its refresh under way."""
        await self._flights.run(backend.label, lambda: self._refresh(backend))

    async def _refresh(self, backend: Backend) -> None:
        started = self._clock()
        try:
            tags = await backend.client.tags()
            running = await backend.client.running()
        except Retryable as exc:
            # No answer in time counts as down, like a connect timeout: a backend that accepts
            # connections and never answers would otherwise be asked again, and wait again, forever.
            # But one late listing from a backend that has answered before is not enough: a gateway
            # busy for a few seconds (or a GPU server busy loading a model) makes a listing late
            # without the backend being gone, and with one backend "down" means every ask refused.
            timed_out = isinstance(exc.__cause__, TimeoutError)
            if timed_out:
                backend.listing_timeouts += 1
            silent = timed_out and (not backend.listed or backend.listing_timeouts >= LISTING_TIMEOUTS_DOWN)
            self._refresh_failed(backend, exc.reason, exc, down=could_not_connect(exc) or silent)
            return
        except (ApiError, aiohttp.ClientError, ValueError) as exc:  # a 4xx, or a body that is not the JSON expected
            self._refresh_failed(backend, "it did not list its models", exc, down=False)
            return
        backend.take_listing(tags, running)
        if backend.down_at is not None and backend.down_at >= started:
            # An ask failed to connect while this listing was on its way: the listing is older news
            # than the failure. The backend stays down for its cooldown (its probe then says), rather
            # than getting asks back until the next failure, one failover per refresh.
            return
        self._mark_up(backend)

    def _refresh_failed(self, backend: Backend, reason: str, failure: BaseException, *, down: bool) -> None:
        """A backend that cannot be reached is down; one that answers badly keeps its last listing
        and its asks (they fail over), unless this was the probe of a down one: then it stays down."""
        if down or not backend.up:
            self.mark_down(backend, reason, failure)
            return
        self._failed(backend, reason, failure)
        log.warning("ollama_backend_refresh_failed", backend=backend.label, reason=reason)

    @staticmethod
    def _failed(backend: Backend, reason: str, failure: BaseException | None) -> None:
        backend.failure = reason
        backend.failure_detail = failure_detail(failure) if failure is not None else ""

    async def run(self) -> None:
        """The background loop: one per backend, so a backend slow to answer delays only its own."""
        async with asyncio.TaskGroup() as loops:
            for backend in self.backends:
                loops.create_task(self._keep_fresh(backend), name=f"ollama-backend-{backend.label}")

    async def _keep_fresh(self, backend: Backend) -> None:
        """Refresh `backend` now, then every refresh interval while it is up, and at its cooldown's end."""
        wake = self._wakes[backend.label]
        next_refresh = self._clock()
        while True:
            now = self._clock()
            periodic = now >= next_refresh
            if periodic:
                next_refresh = now + self._refresh_seconds
            probe = backend.down_until is not None and backend.down_until <= now
            if (periodic and backend.up) or probe:
                await self._refresh_once(backend)
            wake_at = next_refresh if backend.down_until is None else min(next_refresh, backend.down_until)
            wake.clear()
            with contextlib.suppress(TimeoutError):  # or sooner: it went down, its probe is due earlier
                await asyncio.wait_for(wake.wait(), max(0.01, wake_at - self._clock()))
