"""One aiobotocore S3 client per process, and how its failures map onto the image-store's errors."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import aiohttp
import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from common.errors import StorageUnavailable
from services.image_store.settings import S3Settings

if TYPE_CHECKING:  # stubs only (types-aiobotocore-s3); nothing to import at run time
    from types_aiobotocore_s3 import S3Client

log = structlog.get_logger("retina.image_store.s3")

ABSENT = {"404", "NoSuchKey", "NotFound"}
ALREADY_THERE = {"412", "PreconditionFailed"}


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def client_config() -> AioConfig:
    """Standard retries (backoff with jitter on 5xx, throttling and dropped connections), short timeouts."""
    return AioConfig(
        retries={"total_max_attempts": 4, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
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
        config=client_config(),
    ) as client:
        yield client


@contextlib.contextmanager
def unavailable_on_failure(operation: str) -> Iterator[None]:
    """Transport failures and server errors left after retries become a clear 503."""
    try:
        yield
    except ClientError as exc:
        if error_code(exc) in ABSENT | ALREADY_THERE:
            raise
        log.warning("s3_request_failed", operation=operation, code=error_code(exc), error=str(exc))
        raise StorageUnavailable() from exc
    except (BotoCoreError, aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        log.warning("s3_unreachable", operation=operation, error=repr(exc))
        raise StorageUnavailable() from exc
