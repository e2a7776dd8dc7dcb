"""OpenTelemetry tracing for both services, off unless the standard `OTEL_*` variables ask for it.

- config.py: whether this process traces (the on/off decision, made once from the environment);
- setup.py: the per-app TracerProvider (OTLP over HTTP/protobuf), started and flushed in cleanup_ctx;
- spans.py: `traced()`, the one way our code opens a span, free when the request is not traced;
- http.py: the server middleware (incoming requests, W3C traceparent in) and the client trace
  config (outgoing requests, traceparent out);
- db.py: PostgreSQL query spans from asyncpg's per-connection query logger;
- logs.py: the structlog processor that puts trace_id and span_id on every line of a traced request.

Nothing here is installed when tracing is off: no middleware, no client trace config, no query
logger; the log processor and `traced()` find no tracer in one ContextVar lookup and do nothing.
The tracer of the request being handled travels in that context variable (set by the
middleware), so several apps in one process each trace to their own provider and
no OpenTelemetry global is set.
"""
