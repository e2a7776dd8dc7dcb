"""`traced()`: the one way our own code opens a span; nothing at all when the request is not traced.

The tracer of the request being handled lives in a context variable set by the server middleware
(http.py). Tasks a request starts copy its context, so spans they open join the request's trace;
work outside any traced request (background loops, maintenance, tracing off) sees no tracer and
`traced()` returns a shared do-nothing context manager: one ContextVar lookup, no OpenTelemetry call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar, Token

from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

Attributes = Mapping[str, AttributeValue]

_REQUEST_TRACER: ContextVar[Tracer | None] = ContextVar("retina_request_tracer", default=None)
# The shared do-nothing context manager of code that is not traced (nothing allocated per call).
UNTRACED: contextlib.nullcontext[None] = contextlib.nullcontext()


def current_tracer() -> Tracer | None:
    """The tracer of the traced request this code runs for, or None (nothing to record)."""
    return _REQUEST_TRACER.get()


def bind_tracer(tracer: Tracer) -> Token[Tracer | None]:
    """Make `tracer` the current request's tracer (the server middleware does this)."""
    return _REQUEST_TRACER.set(tracer)


def unbind_tracer(token: Token[Tracer | None]) -> None:
    _REQUEST_TRACER.reset(token)


def traced(
    name: str,
    attributes: Attributes | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    expected: Callable[[BaseException], bool] | None = None,
) -> contextlib.AbstractContextManager[Span | None]:
    """A span named `name` around the block (a blocking decode, an S3 call, ...), child of the
    current span; it yields the span (to add attributes from results) or None when not traced.

    An exception leaving the block marks the span as failed, with the exception's type only (its
    message may quote user content); `expected(exc)` true means a normal outcome (S3's 404 on a
    HEAD), recorded as `error.type` without failing the span, as is a cancellation (a client that
    went away).
    """
    tracer = _REQUEST_TRACER.get()
    if tracer is None:
        return UNTRACED
    return _span(tracer, name, attributes, kind, expected)


@contextlib.contextmanager
def _span(
    tracer: Tracer,
    name: str,
    attributes: Attributes | None,
    kind: SpanKind,
    expected: Callable[[BaseException], bool] | None,
) -> Iterator[Span]:
    with tracer.start_as_current_span(
        name, kind=kind, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as exc:
            normal = isinstance(exc, asyncio.CancelledError) or (expected is not None and expected(exc))
            mark_failed(span, exc, failed=not normal)
            raise


def mark_failed(span: Span, exc: BaseException, *, failed: bool = True) -> None:
    """Name the exception's type on the span (never its message) and, if `failed`, fail the span."""
    error_type = type(exc).__qualname__
    span.set_attribute("error.type", error_type)
    if failed:
        span.set_status(Status(StatusCode.ERROR, error_type))
