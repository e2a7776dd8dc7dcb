"""Prometheus plumbing shared by both services: a registry per app, HTTP RED metrics, `/metrics`.

A registry per application (instead of prometheus_client's global one) lets tests run several
apps in one process and keeps each service's exposition to its own metrics.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import prometheus_client
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from common.http.request_context import Handler

# nginx's code for "the client went away before the answer was complete" (not a server error).
CLIENT_CLOSED_REQUEST = 499
# prometheus_client defaults, identical to OTel's http.server.request.duration advice.
HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
# Powers of four from 16 KiB to 64 MiB: covers thumbnails to the largest allowed upload.
SIZE_BUCKETS = (16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# `*_created` series double the series count for no dashboard we draw.
prometheus_client.disable_created_metrics()


def new_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


_Metric = TypeVar("_Metric", bound=MetricWrapperBase)


class MetricFactory:
    """One-line metric definitions on one registry, so a service's metric list reads as a table.

    `preset` creates those label values up front: their series exist (at 0) from the first
    scrape, which rate() and alerts on a metric that has never moved need.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def counter(self, name: str, doc: str, labels: Sequence[str] = (), *, preset: Iterable[str] = ()) -> Counter:
        return _preset(Counter(name, doc, labels, registry=self.registry), preset)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = (), *, preset: Iterable[str] = ()) -> Gauge:
        return _preset(Gauge(name, doc, labels, registry=self.registry), preset)

    def histogram(self, name: str, doc: str, labels: Sequence[str] = (), *, buckets: Sequence[float]) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)


def _preset(metric: _Metric, values: Iterable[str]) -> _Metric:
    for value in values:
        metric.labels(value)
    return metric


# Distinct label-value combinations remembered per metric by `children`; more are still counted
# (through labels() again), only not cached.
CHILDREN_CACHED = 512


def children(metric: _Metric) -> Callable[..., _Metric]:
    """`metric.labels` for hot paths: each label-value combination's child looked up once.

    prometheus_client's labels() converts and checks every value and takes a lock on each call
    (1.7 % of the image-store's CPU per image GET in issue 19's profile, called three or four
    times per request). The cache holds the same children the metric holds; use it only on
    metrics whose children are never removed.
    """
    return functools.lru_cache(maxsize=CHILDREN_CACHED)(metric.labels)


class HttpMetrics:
    """RED metrics for every route, labelled by route template (never by raw path)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "http_server_requests_total",
            "HTTP requests handled, by method, route template and status code.",
            ["method", "route", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "http_server_request_duration_seconds",
            "Time to produce a complete response (streamed SSE responses are excluded).",
            ["method", "route"],
            buckets=HTTP_DURATION_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "http_server_requests_in_flight",
            "Requests currently being handled.",
            ["route"],
            registry=registry,
        )

    def middleware(self) -> Middleware:
        requests, durations, in_flight = children(self.requests), children(self.duration), children(self.in_flight)

        @web.middleware
        async def http_metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            route = route_template(request)
            started = time.perf_counter()
            status = 500
            gauge = in_flight(route)
            gauge.inc()
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:  # redirects and 304s raised as exceptions
                status = exc.status
                raise
            except (asyncio.CancelledError, ConnectionResetError):
                status = CLIENT_CLOSED_REQUEST
                raise
            finally:
                gauge.dec()
                requests(request.method, route, str(status)).inc()
                if not _is_event_stream(request):
                    durations(request.method, route).observe(time.perf_counter() - started)

        return http_metrics_middleware


def _is_event_stream(request: web.Request) -> bool:
    # aiohttp types `Request.get` as Any even for a RequestKey; the key's type is what is stored.
    event_stream: bool = request.get(EVENT_STREAM_KEY, False)
    return event_stream


# Handlers that stream SSE set this so their stream length does not pollute request latency.
EVENT_STREAM_KEY = web.RequestKey("is_event_stream", bool)


def route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


def build_info(registry: CollectorRegistry, service: str, version: str) -> None:
    Info(f"{service}_build", "Build information.", registry=registry).info({"version": version})


def metrics_handler(registry: CollectorRegistry) -> Handler:
    """prometheus_client's own aiohttp handler: content negotiation (OpenMetrics) and `name[]` filters."""
    return make_aiohttp_handler(registry, disable_compression=True)
