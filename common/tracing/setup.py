"""The per-app TracerProvider: built from the environment by the OpenTelemetry SDK, flushed on exit.

The SDK reads what it documents: OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (Resource.create),
OTEL_TRACES_SAMPLER(_ARG) and the span limits (TracerProvider), OTEL_BSP_* (BatchSpanProcessor),
OTEL_EXPORTER_OTLP_* (OTLPSpanExporter: endpoint, headers, timeout, compression, certificates),
OTEL_PROPAGATORS (opentelemetry.propagate). Only the service name gets a default of ours when the
environment gives none, so the services are told apart without any configuration.

A provider per app, never `trace.set_tracer_provider`: the global can be set once per process,
and tests run several apps (each with its own exporter) in one.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

from aiohttp import web
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Tracer

from common.tracing.config import tracing_exporters

INSTRUMENTATION_NAME = "retina"


class Tracing:
    """One app's tracing: the provider exists between `running()`'s start and exit."""

    def __init__(self, service_name: str, exporters: tuple[str, ...]) -> None:
        self.service_name = service_name
        self.exporters = exporters
        self._provider: TracerProvider | None = None

    @property
    def provider(self) -> TracerProvider:
        if self._provider is None:
            raise RuntimeError("tracing is not running (its cleanup context has not started)")
        return self._provider

    @property
    def tracer(self) -> Tracer:
        return self.provider.get_tracer(INSTRUMENTATION_NAME)

    def start(self) -> None:
        provider = TracerProvider(resource=_resource(self.service_name), shutdown_on_exit=False)
        for exporter in self.exporters:
            provider.add_span_processor(BatchSpanProcessor(_exporter(exporter)))
        self._provider = provider

    async def running(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: first in, last out, so spans of every other resource's shutdown are flushed too."""
        del app
        self.start()
        try:
            yield
        finally:
            provider, self._provider = self.provider, None
            # Flushes what is queued (bounded by the exporter's timeout); blocking, so off the loop.
            await asyncio.to_thread(provider.shutdown)


def tracing_from_env(service_name: str) -> Tracing | None:
    """The app's tracing when the environment turns it on, else None (nothing is installed)."""
    exporters = tracing_exporters()
    return Tracing(service_name, exporters) if exporters else None


def _resource(default_service_name: str) -> Resource:
    resource = Resource.create()
    named = str(resource.attributes.get(SERVICE_NAME, ""))
    if not named or named.startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
    return resource


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter(out=sys.stderr)  # stdout is for the JSON log lines
    return OTLPSpanExporter()
