"""Client-facing error messages are plain sentences; the failure behind them is in the log.

`assert_plain` is what every client-facing message must pass (JSON error bodies, SSE `error`
events, /v1 errors, `messages.error`): no exception class names, errno text, reprs, tracebacks,
hosts or internal paths. `logged` reads the JSON lines the services wrote (as production renders
them) from pytest's log capture.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest

# What a client-facing message must not contain: a Python or library exception's name, errno
# text, a repr (`<TransferEncodingError: ...>`, `b'...'`), a traceback, where a service runs, a path.
NOT_PLAIN = re.compile(
    r"\w+(Error|Exception)\b|Errno|Traceback|[<>\[\]]|\bb'|127\.0\.0\.1|localhost|ssl:default|/api/",
)
# What the log's `detail` of a failure does carry: the exception's class.
EXCEPTION_NAME = re.compile(r"\b\w+(Error|Exception)\b")


def assert_plain(message: str) -> None:
    assert message, "a client-facing message says something"
    found = NOT_PLAIN.search(message)
    assert found is None, f"{message!r} shows {found.group(0)!r} to the client"


def logged(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, Any]]:
    """The JSON log lines with this `event`, as the services' log formatter renders them."""
    formatter = logging.getLogger().handlers[0].formatter
    assert formatter is not None
    lines = [json.loads(formatter.format(record)) for record in caplog.records]
    return [line for line in lines if line.get("event") == event]
