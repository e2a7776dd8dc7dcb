"""PostgreSQL spans from asyncpg's own query logger, added to each pooled connection.

Not opentelemetry-instrumentation-asyncpg: that one patches asyncpg.Connection for the whole
process (one provider per process, every background query a root trace). A query logger is per
connection, added only to the pools of apps that trace, and the spans it makes are children of a
traced request only; background loops (stream liveness, maintenance) leave none.

asyncpg calls the logger just after the query (loop.call_soon, in the querying task's context), with
the time it took; the span is dated back by that time. The SQL text is recorded (ours is
parameterised: values travel as $n arguments), never the arguments, nor an error's message (it
may quote a value).
"""

from __future__ import annotations

import time

import asyncpg
from asyncpg.connection import LoggedQuery
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from common.tracing.spans import current_tracer

MAX_QUERY_TEXT = 2048


def trace_queries(conn: asyncpg.Connection) -> None:
    """Pool `init` addition: every query of this connection becomes a span of the request that ran it."""
    conn.add_query_logger(_query_span)


def _query_span(record: LoggedQuery) -> None:
    tracer = current_tracer()
    if tracer is None:
        return
    ended = time.time_ns()
    query = " ".join(str(record.query).split())
    operation = query.split(" ", 1)[0].upper() if query else ""
    attributes: dict[str, AttributeValue] = {
        "db.system.name": "postgresql",
        "db.query.text": query[:MAX_QUERY_TEXT],
        "db.operation.name": operation,
    }
    database = getattr(record.conn_params, "database", None)
    if database:
        attributes["db.namespace"] = str(database)
    if isinstance(record.conn_addr, tuple) and len(record.conn_addr) >= 2:
        attributes["server.address"] = str(record.conn_addr[0])
        attributes["server.port"] = int(record.conn_addr[1])
    span = tracer.start_span(
        f"{operation or 'query'} postgresql",
        kind=SpanKind.CLIENT,
        attributes=attributes,
        start_time=ended - int(record.elapsed * 1e9),
    )
    if record.exception is not None:
        error_type = type(record.exception).__qualname__
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, error_type))
    span.end(end_time=ended)
