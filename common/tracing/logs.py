"""trace_id and span_id on every log line written inside a traced request (structlog processor).

Always in the chain (logging is configured once per process, before any app exists); outside a
traced request, tracing off included, it costs one ContextVar lookup and adds nothing.
"""

from __future__ import annotations

from opentelemetry.trace import format_span_id, format_trace_id, get_current_span
from structlog.types import EventDict, WrappedLogger

from common.tracing.spans import current_tracer


def add_trace_ids(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    del logger, method_name
    if current_tracer() is None:
        return event_dict
    context = get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format_trace_id(context.trace_id)
        event_dict["span_id"] = format_span_id(context.span_id)
    return event_dict
