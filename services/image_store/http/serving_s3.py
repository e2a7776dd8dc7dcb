"""GET/HEAD of an image whose bytes are in object storage (IMAGE_SERVE_MODE=proxy|redirect).

The handler has already checked access and answered If-None-Match/If-Match; this module only
moves bytes. proxy: the replica streams the object (or the requested byte range) through with
the same headers as a file; the object store's failure before the first byte is a JSON 503.
Waiting on S3, for the answer and for every chunk of its body, counts against one deadline
(S3_OPERATION_TIMEOUT_SECONDS); a stall after the first byte cuts the response short.
redirect: a 302 to a short-lived presigned URL whose response headers S3 sets from the presign
parameters, so the bytes never pass through the replica.
"""

from __future__ import annotations

import structlog
from aiohttp import hdrs, web

from common.errors import StorageUnavailable, StoredImageNotFound
from services.image_store.models import ImageRow
from services.image_store.service import ImageService
from services.image_store.storage.s3 import S3BlobStore
from services.image_store.storage.s3_client import unavailable_on_failure

log = structlog.get_logger("retina.image_store.serving")

PRESIGNED_URL_TTL_SECONDS = 300
STREAM_CHUNK = 64 * 1024


async def object_response(
    request: web.Request, service: ImageService, row: ImageRow, headers: dict[str, str]
) -> web.StreamResponse:
    store = service.storage
    if not isinstance(store, S3BlobStore):
        raise TypeError(f"{store.name} has no objects to serve")
    if service.settings.serve_mode == "redirect":
        return await _redirect(store, row, headers)
    return await _proxy(request, store, row, headers)


async def _redirect(store: S3BlobStore, row: ImageRow, headers: dict[str, str]) -> web.Response:
    url = await store.presigned_get(
        row.storage_key,
        expires_in=PRESIGNED_URL_TTL_SECONDS,
        response_headers={
            "ResponseContentType": row.mime_type,
            "ResponseContentDisposition": headers["Content-Disposition"],
            "ResponseCacheControl": headers["Cache-Control"],
        },
    )
    # The redirect itself must not outlive the URL it points to. It names the content it leads to
    # (ETag: the SHA-256), so a service caller need not hash the bytes the object store sends.
    return web.Response(
        status=302, headers={"Location": url, "Cache-Control": "private, no-store", "ETag": headers["ETag"]}
    )


def _requested_range(request: web.Request, size: int, etag: str) -> tuple[int, int] | str | None:
    """(first, last) inclusive, None for the whole object, or "unsatisfiable"; like FileResponse."""
    if hdrs.RANGE not in request.headers:
        return None
    if_range = request.headers.get(hdrs.IF_RANGE)
    if if_range is not None and if_range.strip() != etag:
        return None  # the client's copy is another representation: send it whole
    try:
        wanted = request.http_range
    except ValueError:
        return "unsatisfiable"
    start, stop = wanted.start, wanted.stop
    if start is None:
        return None
    if start < 0 and stop is None:  # bytes=-N: the last N bytes
        start = max(0, size + start)
        stop = size
    stop = size if stop is None else min(stop, size)
    if start >= size or start >= stop:
        return "unsatisfiable"
    return start, stop - 1


async def _proxy(
    request: web.Request, store: S3BlobStore, row: ImageRow, headers: dict[str, str]
) -> web.StreamResponse:
    etag = f'"{row.sha256}"'
    size = row.size_bytes
    wanted = _requested_range(request, size, etag)
    base = {**headers, "ETag": etag, "Accept-Ranges": "bytes"}
    if wanted == "unsatisfiable":
        base.pop("Content-Type")
        return web.Response(status=416, headers={**base, "Content-Range": f"bytes */{size}"})
    response = web.StreamResponse(status=200, headers=base)
    if isinstance(wanted, tuple):
        response.set_status(206)
        response.headers["Content-Range"] = f"bytes {wanted[0]}-{wanted[1]}/{size}"
        response.content_length = wanted[1] - wanted[0] + 1
    else:
        response.content_length = size
    response.last_modified = row.created_at
    if request.method == hdrs.METH_HEAD:
        await response.prepare(request)
        return response
    async with store.open_object(row.storage_key, wanted if isinstance(wanted, tuple) else None) as body:
        if body is None:
            raise StoredImageNotFound()  # a row without bytes: integrity checks report it
        await response.prepare(request)
        try:
            with unavailable_on_failure("stream"):
                async for chunk in body.chunks(STREAM_CHUNK):
                    await response.write(chunk)
        except StorageUnavailable:
            # The status line is sent already; a connection cut short before Content-Length
            # bytes is the only honest signal left (clients then see a truncated body).
            log.warning("s3_stream_interrupted", key=row.storage_key)
            if request.transport is not None:
                request.transport.close()
            return response
    await response.write_eof()
    return response
