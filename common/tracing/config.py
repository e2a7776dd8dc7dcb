"""Whether this process traces: decided from the standard OpenTelemetry variables only.

Tracing is on when OTEL_TRACES_EXPORTER names an exporter (`otlp`, or `console` to debug), or, with
OTEL_TRACES_EXPORTER unset, when an OTLP endpoint is given (OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). OTEL_SDK_DISABLED=true turns it off whatever else is set.
Everything else (endpoint, headers, timeout, compression, service name, resource attributes,
sampler, batch sizes, propagators) is read by the OpenTelemetry SDK itself, not here.

The SDK's own default exporter is `otlp` to localhost: that would make every deployment trace to
nowhere, so here the absence of both variables means off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_SDK_DISABLED,
)

from common.settings import SettingsError

SUPPORTED_EXPORTERS = ("otlp", "console")
# Only the HTTP/protobuf OTLP exporter is installed (no gRPC stack in the image).
SUPPORTED_PROTOCOL = "http/protobuf"


class TracingMisconfigured(SettingsError):
    """The OTEL_* variables ask for something this build cannot do (refused at start-up, like any
    other configuration problem)."""

    def __init__(self, problem: str) -> None:
        super().__init__([problem])


def tracing_exporters(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The exporters to trace to; empty: tracing is off. Raises TracingMisconfigured."""
    env = os.environ if environ is None else environ
    if env.get(OTEL_SDK_DISABLED, "").strip().lower() == "true":
        return ()
    named = [name.strip().lower() for name in env.get(OTEL_TRACES_EXPORTER, "").split(",") if name.strip()]
    if not named:
        endpoint = env.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "").strip() or env.get(OTEL_EXPORTER_OTLP_ENDPOINT, "")
        named = ["otlp"] if endpoint.strip() else []
    exporters = tuple(dict.fromkeys(name for name in named if name != "none"))
    unknown = [name for name in exporters if name not in SUPPORTED_EXPORTERS]
    if unknown:
        raise TracingMisconfigured(
            f"{OTEL_TRACES_EXPORTER}={','.join(unknown)} is not available: use one of {', '.join(SUPPORTED_EXPORTERS)}"
        )
    if "otlp" in exporters:
        for variable in (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL):
            protocol = env.get(variable, "").strip()
            if protocol:
                if protocol != SUPPORTED_PROTOCOL:
                    raise TracingMisconfigured(f"{variable}={protocol} is not available: only {SUPPORTED_PROTOCOL}")
                break
    return exporters


def tracing_requested(environ: Mapping[str, str] | None = None) -> bool:
    """True when the environment turns tracing on (see the module docstring)."""
    return bool(tracing_exporters(environ))
