"""One aiobotocore S3 client per process, the deadline of each call, and how failures map onto the
image-store's errors.

botocore's own timeouts bound one socket operation of one attempt (connecting, one read); they
never bound sending a body, nor an attempt and its retries together: against an endpoint that
accepts connections and then makes no progress, a PUT waited for ever and a GET 4 x 30 s. So every
call is also bounded as a whole by `S3_OPERATION_TIMEOUT_SECONDS` (`s3_call`): connecting,
sending, botocore's retries with their backoff, and the body (`ObjectBody`). What is still
failing then is a 503 `storage_unavailable` with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from opentelemetry.trace import SpanKind

from common.errors import StorageUnavailable
from common.tracing.spans import traced
from services.image_store.settings import S3Settings

if TYPE_CHECKING:  # stubs only (types-aiobotocore-s3); nothing to import at run time
    from types_aiobotocore_s3 import S3Client

log = structlog.get_logger("retina.image_store.s3")

ABSENT = {"404", "NoSuchKey", "NotFound"}
ALREADY_THERE = {"412", "PreconditionFailed"}


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def client_config(deadline_seconds: float) -> AioConfig:
    """Standard retries (backoff with jitter on 5xx, throttling and dropped connections) inside the
    call's deadline: one attempt's connect and read timeouts are fractions of it, so an attempt
    stuck on one bad connection is retried on another before the deadline ends the call."""
    return AioConfig(
        retries={"total_max_attempts": 4, "mode": "standard"},
        connect_timeout=min(5.0, deadline_seconds / 3),
        read_timeout=deadline_seconds / 2,
        max_pool_connections=64,
        signature_version="s3v4",  # presigned URLs too (botocore would otherwise presign with SigV2)
        # Only the checksums we send ourselves: S3-compatible servers differ in what else they accept.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


@contextlib.asynccontextmanager
async def s3_client(settings: S3Settings) -> AsyncIterator[S3Client]:
    """One client (one connection pool) per process; credentials from botocore's standard chain."""
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region or "us-east-1",
        config=client_config(settings.operation_timeout_seconds),
    ) as client:
        yield client


@contextlib.contextmanager
def unavailable_on_failure(operation: str) -> Iterator[None]:
    """Transport failures, server errors left after retries and a call's deadline become a clear 503.

    Every S3 call goes through here, so here is its span (when the request is traced): retries
    and backoff inside it, a missing object or an existing key a normal outcome.
    """
    attributes = {**_S3_SPAN_ATTRIBUTES, "rpc.method": operation}
    with (
        traced(f"S3 {operation}", attributes, kind=SpanKind.CLIENT, expected=_is_expected),
        _unavailable_on_failure(operation),
    ):
        yield


_S3_SPAN_ATTRIBUTES = {"rpc.system": "aws-api", "rpc.service": "S3"}


def _is_expected(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and error_code(exc) in ABSENT | ALREADY_THERE


@contextlib.contextmanager
def _unavailable_on_failure(operation: str) -> Iterator[None]:
    try:
        yield
    except ClientError as exc:
        if error_code(exc) in ABSENT | ALREADY_THERE:
            raise
        log.warning("s3_request_failed", operation=operation, code=error_code(exc), error=str(exc))
        raise StorageUnavailable() from exc
    except DeadlineExceeded as exc:
        log.warning("s3_timed_out", operation=operation, seconds=exc.seconds)
        raise StorageUnavailable() from exc
    except (BotoCoreError, aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        log.warning("s3_unreachable", operation=operation, error=repr(exc))
        raise StorageUnavailable() from exc


class DeadlineExceeded(TimeoutError):
    """An S3 call (its retries and body included) did not finish within S3_OPERATION_TIMEOUT_SECONDS."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no answer from S3 within {seconds:g} s")
        self.seconds = seconds


@contextlib.asynccontextmanager
async def deadline(seconds: float) -> AsyncIterator[None]:
    """Bound the awaits inside to `seconds` in all; then DeadlineExceeded (a TimeoutError)."""
    timeout = asyncio.timeout(seconds)
    try:
        async with timeout:
            yield
    except TimeoutError as exc:
        if not timeout.expired():
            raise  # a timeout of botocore's own (one attempt's connect or read)
        raise DeadlineExceeded(seconds) from exc


@contextlib.asynccontextmanager
async def s3_call(operation: str, seconds: float) -> AsyncIterator[None]:
    """One S3 call, bounded as a whole by `seconds`; whatever failure is left is a 503."""
    with unavailable_on_failure(operation):
        async with deadline(seconds):
            yield


class ObjectBody:
    """An object's bytes as S3 sends them, within what is left of the call's deadline.

    Only the time spent waiting for S3 counts: a slow client that the bytes are relayed to holds
    its own connection, not the object store's deadline. A read that runs out raises
    DeadlineExceeded (in `unavailable_on_failure`, a 503 or a cut-short response).
    """

    def __init__(self, body: Any, seconds_left: float, seconds: float) -> None:
        self._body = body
        self._left = seconds_left
        self._seconds = seconds

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        while True:
            started = time.monotonic()
            timeout = asyncio.timeout(max(self._left, 0.0))
            try:
                async with timeout:
                    chunk: bytes = await self._body.read(size)
            except TimeoutError as exc:
                if not timeout.expired():
                    raise
                raise DeadlineExceeded(self._seconds) from exc
            finally:
                self._left -= time.monotonic() - started
            if not chunk:
                return
            yield chunk
