"""HTTP spans: the server middleware (incoming requests) and the client trace config (outgoing ones).

Incoming: our own middleware rather than opentelemetry-instrumentation-aiohttp-server, whose
middleware only works after its instrumentor has patched `web.Application` for the whole process
and which records the full URL: the query of a signed image URL (`sig`) is a credential. Here a
span records the path and the route template, never the query; the W3C `traceparent` (and
whatever else OTEL_PROPAGATORS names) continues the caller's trace. Health probes and /metrics are
not traced (a kubelet and Prometheus call them every few seconds).

Outgoing: opentelemetry-instrumentation-aiohttp-client's `create_trace_config`, given to the one
ClientSession of the app (no global patching): a CLIENT span per request made for a traced request,
parent of the callee's server span through the `traceparent` it injects. Its own span starts for
any request on the session; here it starts only inside a traced request, so the background loops
(the fleet listing every backend every OLLAMA_REFRESH_SECONDS) leave no root traces, as for
queries (db.py).
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry.instrumentation._semconv import _StabilityMode
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.propagate import extract
from opentelemetry.trace import SpanKind, Status, StatusCode

from common.http.request_context import REQUEST_ID_KEY, Handler
from common.metrics import CLIENT_CLOSED_REQUEST, route_template
from common.tracing.setup import Tracing
from common.tracing.spans import bind_tracer, current_tracer, mark_failed, unbind_tracer

_OnRequestStart = Callable[
    [aiohttp.ClientSession, types.SimpleNamespace, aiohttp.TraceRequestStartParams], Awaitable[object]
]

UNTRACED_PATHS = frozenset({"/livez", "/readyz", "/metrics"})


def tracing_middleware(tracing: Tracing) -> Middleware:
    """A SERVER span per request, current while the handler runs (a streamed answer included)."""

    @web.middleware
    async def trace_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in UNTRACED_PATHS:
            return await handler(request)
        tracer = tracing.tracer
        route = route_template(request)
        token = bind_tracer(tracer)
        try:
            with tracer.start_as_current_span(
                f"{request.method} {route}",
                context=extract(request.headers),
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": request.method,
                    "http.route": route,
                    "url.path": request.path,
                    "url.scheme": request.scheme,
                    "network.protocol.version": f"{request.version.major}.{request.version.minor}",
                    **({"user_agent.original": agent} if (agent := request.headers.get("User-Agent")) else {}),
                },
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                status = 500
                try:
                    response = await handler(request)
                    status = response.status
                    return response
                except web.HTTPException as exc:
                    status = exc.status
                    raise
                except (asyncio.CancelledError, ConnectionResetError) as exc:
                    status = CLIENT_CLOSED_REQUEST
                    mark_failed(span, exc, failed=False)
                    raise
                except Exception as exc:
                    mark_failed(span, exc)
                    raise
                finally:
                    span.set_attribute("http.response.status_code", status)
                    span.set_attribute("retina.request_id", request.get(REQUEST_ID_KEY, ""))
                    if 500 <= status < 600:
                        span.set_status(Status(StatusCode.ERROR))
        finally:
            unbind_tracer(token)

    return trace_requests


def client_trace_configs(tracing: Tracing | None) -> list[aiohttp.TraceConfig]:
    """For the app's ClientSession(trace_configs=...): none when tracing is off."""
    if tracing is None:
        return []
    config = create_trace_config(tracer_provider=tracing.provider, sem_conv_opt_in_mode=_StabilityMode.HTTP)
    starts = list(config.on_request_start)
    config.on_request_start.clear()
    config.on_request_start.extend(_in_traced_requests(start) for start in starts)
    return [config]


def _in_traced_requests(start: _OnRequestStart) -> _OnRequestStart:
    """The instrumentation's `on_request_start`, run only for a request made inside a traced one;
    left out, no span exists and its end and exception callbacks do nothing."""

    async def on_request_start(
        session: aiohttp.ClientSession, context: types.SimpleNamespace, params: aiohttp.TraceRequestStartParams
    ) -> None:
        if current_tracer() is not None:
            await start(session, context, params)

    return on_request_start
