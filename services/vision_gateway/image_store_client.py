"""The image-store as the gateway sees it: fetch bytes, upload files, link images, list by message.

Every call carries the service token and the calling user's ID, so the store's ownership check
applies: someone else's image is a 404 here exactly as it is there.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from common.errors import ImageNotFound, StoreRefusedUpload, UpstreamRejected, UpstreamUnavailable
from services.vision_gateway.admission import Reservation
from services.vision_gateway.metrics import GatewayMetrics
from services.vision_gateway.retry import retry_after_seconds
from services.vision_gateway.upstream import UpstreamClient

# What the store may still spend on an upload after its last byte arrived: waiting for a decode
# worker, the decode itself (IMAGE_DECODE_TIMEOUT_SECONDS, 20 s by default) and the database rows.
UPLOAD_PROCESSING_ALLOWANCE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class FetchedImage:
    image_id: uuid.UUID
    data: bytes | None  # None: unchanged since the ETag the caller already had (304)
    sha256: str
    mime_type: str


@dataclass(frozen=True, slots=True)
class ReadImage:
    image_id: uuid.UUID
    data: bytes
    sha256: str  # the store's ETag


@dataclass(frozen=True, slots=True)
class ImageMeta:
    """What the store knows of an image before its bytes move: enough to key and budget a fetch."""

    image_id: uuid.UUID
    sha256: str
    size_bytes: int
    width: int
    height: int
    url: str | None = None  # the store's signed URL (the store signs; the gateway holds no key)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ImageMeta:
        """From the store's ImageRecord JSON (an upload's answer, or GET /meta)."""
        signed = record.get("url")
        return cls(
            uuid.UUID(str(record["id"])),
            str(record["sha256"]),
            int(record["size_bytes"]),
            int(record["width"]),
            int(record["height"]),
            signed if isinstance(signed, str) else None,
        )


class ImageStoreClient(UpstreamClient):
    label = "image_store"
    unavailable = "the image-store is unavailable"

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        token: str,
        *,
        retries: int,
        metrics: GatewayMetrics,
        endpoint: str = "/api/images",
        upload_deadline_seconds: float = 300.0,
    ) -> None:
        super().__init__(session, retries=retries, metrics=metrics)
        self._base = base_url + endpoint
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=60, sock_connect=5)
        # Derived from the store's own IMAGE_UPLOAD_DEADLINE_SECONDS: the store always answers a
        # slow upload (408) before the gateway would give up on it, so the gateway never masks
        # the store's verdict with a 503 of its own. No sock_read: while a slow client's bytes
        # are still being forwarded the store has nothing to say yet.
        self._upload_timeout = aiohttp.ClientTimeout(
            total=upload_deadline_seconds + UPLOAD_PROCESSING_ALLOWANCE_SECONDS, sock_connect=5
        )

    def _headers(self, user_id: str, request_id: str) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self._token}", "X-User-Id": user_id}
        if request_id:
            headers["X-Request-ID"] = request_id
        return headers

    async def fetch(
        self, image_id: uuid.UUID, user_id: str, request_id: str = "", *, known_sha256: str | None = None
    ) -> FetchedImage:
        """The image's bytes; with `known_sha256`, a conditional GET that skips the body on 304."""
        headers = self._headers(user_id, request_id)
        if known_sha256:
            # "*" asks only whether the caller may read the image: 304 (no body) or 404.
            headers["If-None-Match"] = "*" if known_sha256 == "*" else f'"{known_sha256}"'

        async def attempt() -> FetchedImage:
            url = f"{self._base}/{image_id}"
            async with self._exchange("GET", url, headers=headers, timeout=self._timeout) as response:
                if response.status == 304 and known_sha256:
                    return FetchedImage(image_id, None, known_sha256, "")
                _raise_unless_ok(response, image_id)
                return FetchedImage(
                    image_id=image_id,
                    data=await response.read(),
                    sha256=response.headers.get("ETag", "").strip('"'),
                    mime_type=response.content_type,
                )

        return await self._call(attempt)

    async def fetch_held(
        self,
        image_id: uuid.UUID,
        user_id: str,
        request_id: str,
        *,
        hold: Callable[[int], Awaitable[Reservation]],
    ) -> tuple[ReadImage, Reservation]:
        """The image's bytes, with `hold(length)` taken before the body is read (the caller releases
        it). One GET: the store's owner check (404 for someone else's image) and the download."""

        async def attempt() -> tuple[ReadImage, Reservation]:
            url = f"{self._base}/{image_id}"
            headers = self._headers(user_id, request_id)
            async with self._exchange("GET", url, headers=headers, timeout=self._timeout) as response:
                _raise_unless_ok(response, image_id)
                held = await hold(response.content_length or 0)
                try:
                    data = await response.read()
                except BaseException:
                    held.release()
                    raise
                # Redirected to object storage: the store's own answer (the first hop) carries the SHA-256.
                first = response.history[0] if response.history else response
                return ReadImage(image_id, data, first.headers.get("ETag", "").strip('"')), held

        return await self._call(attempt)

    async def meta(self, image_id: uuid.UUID, user_id: str, request_id: str = "") -> ImageMeta:
        """The image's record as the user sees it: a small JSON answer that is also the access check."""

        async def attempt() -> ImageMeta:
            url = f"{self._base}/{image_id}/meta"
            headers = self._headers(user_id, request_id)
            async with self._exchange("GET", url, headers=headers, timeout=self._timeout) as response:
                _raise_unless_ok(response, image_id)
                return ImageMeta.from_record(await response.json())

        return await self._call(attempt)

    async def check_access(self, image_id: uuid.UUID, user_id: str, request_id: str = "") -> None:
        """404 unless the user may read the image: `If-None-Match: *` makes the store answer 304, no body."""
        await self.fetch(image_id, user_id, request_id, known_sha256="*")

    async def upload(
        self,
        user_id: str,
        chunks: AsyncIterator[bytes],
        *,
        filename: str | None,
        content_type: str,
        request_id: str = "",
    ) -> dict[str, Any]:
        """Forward one file as it streams in (not retried: the stream can only be read once).

        The store's verdict is passed on unchanged (StoreRefusedUpload); only a store that cannot
        be reached, breaks the connection without answering or overruns the upload timeout is
        503 upstream_unavailable.
        """
        form = aiohttp.FormData(quote_fields=False)
        form.add_field("file", chunks, filename=filename or "upload", content_type=content_type)

        async def attempt() -> dict[str, Any]:
            async with self._exchange(
                "POST",
                self._base,
                data=form,
                headers=self._headers(user_id, request_id),
                timeout=self._upload_timeout,
                relay_server_errors=True,  # the store's 503 busy / 507 full is its verdict on this file
            ) as response:
                if response.status == 201:
                    record: dict[str, Any] = await response.json(content_type=None)
                    return record
                raise await _refusal(response)

        return await self._call(attempt, retry=False)

    async def link(self, image_id: uuid.UUID, message_id: uuid.UUID, user_id: str, request_id: str = "") -> None:
        async def attempt() -> None:
            async with self._exchange(
                "PATCH",
                f"{self._base}/{image_id}",
                json={"message_id": str(message_id)},
                headers=self._headers(user_id, request_id),
                timeout=self._timeout,
            ) as response:
                if response.status == 404:
                    raise ImageNotFound(f"image {image_id} not found")

        await self._call(attempt)

    async def signed_url(self, image_id: uuid.UUID, user_id: str, request_id: str = "") -> str | None:
        """The image's signed URL from its metadata; None when the store no longer has it for this user."""
        try:
            return (await self.meta(image_id, user_id, request_id)).url
        except ImageNotFound:
            return None

    async def delete(self, image_id: uuid.UUID, user_id: str, request_id: str = "") -> None:
        """Best effort, not retried: used to undo uploads of a request that was then refused."""

        async def attempt() -> None:
            url = f"{self._base}/{image_id}"
            async with self._exchange("DELETE", url, headers=self._headers(user_id, request_id), timeout=self._timeout):
                pass

        with contextlib.suppress(UpstreamUnavailable):
            await self._call(attempt, retry=False)


def _raise_unless_ok(response: aiohttp.ClientResponse, image_id: uuid.UUID) -> None:
    """A read of one image: 404 is the user's "no such image"; any other non-200 is the store refusing us."""
    if response.status == 404:
        raise ImageNotFound(f"image {image_id} not found")
    if response.status != 200:
        raise UpstreamRejected(f"the image-store refused image {image_id}: HTTP {response.status}")


async def _refusal(response: aiohttp.ClientResponse) -> Exception:
    """The store's error for a refused upload, as the gateway passes it on."""
    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
    try:
        error = (await response.json(content_type=None)).get("error", {})
    except (ValueError, AttributeError, aiohttp.ClientPayloadError):
        error = {}  # not the store's JSON (a proxy's page?): keep the status, say so
    if not isinstance(error, dict):
        error = {}
    code, message = error.get("code"), error.get("message")
    if response.status >= 500 and response.status not in (503, 507):
        return UpstreamUnavailable("the image-store failed to store an image", retry_after=retry_after)
    if not isinstance(code, str) or not isinstance(message, str):
        return UpstreamRejected(f"the image-store refused the upload: HTTP {response.status}")
    return StoreRefusedUpload(response.status, code, message, retry_after=retry_after)
