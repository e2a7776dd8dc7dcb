"""HTTP handlers: parse the request, call ImageService, shape the response. Nothing else."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import BadContentDispositionHeader

from common.app import AUTH_KEY
from common.errors import ApiError
from common.ids import parse_uuid
from services.image_store.errors import BadRequest, ImageNotFound, PayloadTooLarge, StoreError
from services.image_store.filenames import content_disposition
from services.image_store.models import ImageRow
from services.image_store.service import ImageService, UploadSession
from services.image_store.serving_s3 import object_response
from services.image_store.validation import ImageRejected

IMAGE_SERVICE_KEY = web.AppKey("image_service", ImageService)

CHUNK_SIZE = 256 * 1024
# Room for multipart boundaries and the small fields next to the file.
MULTIPART_OVERHEAD = 64 * 1024
MAX_PARTS = 8
MAX_FIELD_BYTES = 1024


def to_api_error(exc: StoreError | ImageRejected) -> ApiError:
    headers = {}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after:
        headers["Retry-After"] = str(retry_after)
    return ApiError(exc.status, exc.code, exc.message, headers=headers)


@web.middleware
async def store_errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Domain errors become the contract's JSON errors (inside the shared error middleware)."""
    try:
        return await handler(request)
    except (StoreError, ImageRejected) as exc:
        raise to_api_error(exc) from exc


def parse_image_id(raw: str) -> uuid.UUID:
    """A malformed ID is indistinguishable from a missing image."""
    image_id = parse_uuid(raw)
    if image_id is None:
        raise ImageNotFound()
    return image_id


def parse_optional_uuid(raw: str | None, field: str) -> uuid.UUID | None:
    if raw is None or raw == "":
        return None
    value = parse_uuid(raw)
    if value is None:
        raise BadRequest(f"{field} must be a UUID")
    return value


def service_of(request: web.Request) -> ImageService:
    return request.app[IMAGE_SERVICE_KEY]


def record_json(service: ImageService, row: ImageRow) -> dict[str, Any]:
    return row.to_json(service.signed_url(row.id))


# ---- upload ------------------------------------------------------------------------------


async def upload_image(request: web.Request) -> web.Response:
    caller = request.app[AUTH_KEY].caller(request)
    service = service_of(request)
    async with service.upload(caller.user_id) as session:
        declared = request.content_length
        if declared is not None and declared > service.settings.max_size_bytes + MULTIPART_OVERHEAD:
            raise PayloadTooLarge(
                f"the upload exceeds the limit of {service.settings.max_size_bytes // (1024 * 1024)} MiB"
            )
        if request.content_type == "multipart/form-data":
            fields, filename = await _receive_multipart(request, session)
        elif request.content_type.startswith("image/") or request.content_type == "application/octet-stream":
            await session.receive(request.content.iter_chunked(CHUNK_SIZE))
            fields, filename = dict(request.query), request.query.get("filename")
        else:
            raise ApiError(
                415,
                "unsupported_media_type",
                "send multipart/form-data with one part named 'file' (or a raw image body)",
            )
        stored = await session.commit(
            original_filename=filename,
            message_id=parse_optional_uuid(fields.get("message_id"), "message_id"),
        )
    body = record_json(service, stored.row)
    return web.json_response(
        body, status=201, headers={"Location": f"{service.settings.serve_endpoint}/{stored.row.id}"}
    )


async def _receive_multipart(request: web.Request, session: UploadSession) -> tuple[dict[str, str], str | None]:
    try:
        reader = await request.multipart()
        fields: dict[str, str] = {}
        filename: str | None = None
        parts = 0
        while (part := await reader.next()) is not None:
            parts += 1
            if parts > MAX_PARTS:
                raise BadRequest(f"at most {MAX_PARTS} multipart parts are accepted")
            if isinstance(part, MultipartReader):
                raise BadRequest("nested multipart bodies are not accepted")
            if part.name == "file":
                filename = part.filename
                await session.receive(_part_chunks(part))
            else:
                fields[part.name or ""] = await _read_small_field(part)
    except (ValueError, AssertionError, UnicodeDecodeError, HttpProcessingError, BadContentDispositionHeader) as exc:
        # aiohttp's messages can echo raw header bytes; keep ours short and printable.
        raise BadRequest("malformed multipart body") from exc
    if session.received is None:
        raise BadRequest("a file part named 'file' is required")
    return fields, filename


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK_SIZE):
        yield chunk


async def _read_small_field(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(MAX_FIELD_BYTES):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise BadRequest(f"field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes")
    return data.decode("utf-8")


# ---- serving -----------------------------------------------------------------------------


class ImageFileResponse(web.FileResponse):
    """sendfile with a strong ETag equal to the content's SHA-256 (not aiohttp's mtime tag)."""

    def __init__(self, path: Any, *, sha256: str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._content_etag = sha256

    @property
    def etag(self) -> Any:
        return web.StreamResponse.etag.fget(self)  # type: ignore[attr-defined]

    @etag.setter
    def etag(self, value: Any) -> None:
        del value
        web.StreamResponse.etag.fset(self, self._content_etag)  # type: ignore[attr-defined]


def image_headers(row: ImageRow, max_age: int) -> dict[str, str]:
    return {
        "Content-Type": row.mime_type,
        "Cache-Control": f"private, max-age={max_age}, immutable",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
        "Cross-Origin-Resource-Policy": "same-site",
        "Content-Disposition": content_disposition(row.original_filename, fallback=str(row.id)),
    }


def _etag_listed(header: str, sha256: str) -> bool:
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or f'"{sha256}"' in tags


async def serve_image(request: web.Request) -> web.StreamResponse:
    service = service_of(request)
    image_id = parse_image_id(request.match_info["image_id"])
    query = request.query
    if "sig" in query or "exp" in query:
        row = await service.get_signed(image_id, query.get("exp", ""), query.get("sig", ""))
    else:
        caller = request.app[AUTH_KEY].caller(request)
        row = await service.get(image_id, caller.user_id)
    headers = image_headers(row, service.settings.cache_max_age_seconds)
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and _etag_listed(if_none_match, row.sha256):
        headers.pop("Content-Type")
        headers["ETag"] = f'"{row.sha256}"'
        return web.Response(status=304, headers=headers)
    if_match = request.headers.get("If-Match")
    if if_match is not None and not _etag_listed(if_match, row.sha256):
        raise ApiError(412, "precondition_failed", "the image does not match If-Match")
    path = service.file_path(row)
    if path is None:
        return await object_response(request, service, row, headers)
    return ImageFileResponse(path, sha256=row.sha256, headers=headers)


async def count_served(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the final status of byte responses (200/206/304/416) is known here."""
    if request.match_info.route.name == "image_bytes":
        request.app[IMAGE_SERVICE_KEY].metrics.serve_responses.labels(str(response.status)).inc()


# ---- metadata ----------------------------------------------------------------------------


async def image_meta(request: web.Request) -> web.Response:
    caller = request.app[AUTH_KEY].caller(request)
    service = service_of(request)
    row = await service.get(parse_image_id(request.match_info["image_id"]), caller.user_id)
    return web.json_response(record_json(service, row))


async def link_image(request: web.Request) -> web.Response:
    caller = request.app[AUTH_KEY].caller(request)
    service = service_of(request)
    image_id = parse_image_id(request.match_info["image_id"])
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest('the body must be JSON like {"message_id": "<uuid>"}') from exc
    if not isinstance(body, dict) or set(body) != {"message_id"}:
        raise BadRequest("the body must be a JSON object with exactly one field, message_id")
    raw = body["message_id"]
    if raw is not None and not isinstance(raw, str):
        raise BadRequest("message_id must be a UUID string or null")
    row = await service.link(image_id, caller.user_id, parse_optional_uuid(raw, "message_id"))
    return web.json_response(record_json(service, row))


async def delete_image(request: web.Request) -> web.Response:
    caller = request.app[AUTH_KEY].caller(request)
    await service_of(request).delete(parse_image_id(request.match_info["image_id"]), caller.user_id)
    return web.Response(status=204)


async def list_images(request: web.Request) -> web.Response:
    caller = request.app[AUTH_KEY].caller(request)
    service = service_of(request)
    raw_limit = request.query.get("limit", "50")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 100:
        raise BadRequest("limit must be a whole number from 1 to 100")
    rows, next_cursor = await service.list(
        caller.user_id,
        message_id=parse_optional_uuid(request.query.get("message_id"), "message_id"),
        limit=int(raw_limit),
        cursor=request.query.get("cursor") or None,
    )
    return web.json_response({"images": [record_json(service, row) for row in rows], "next_cursor": next_cursor})


async def storage_stats(request: web.Request) -> web.Response:
    request.app[AUTH_KEY].check_token(request)
    stats = await service_of(request).stats()
    return web.json_response(stats.to_json())


def add_routes(app: web.Application, endpoint: str) -> None:
    app.router.add_post(endpoint, upload_image, name="upload")
    app.router.add_get(endpoint, list_images, name="list")
    app.router.add_get(f"{endpoint}/{{image_id}}", serve_image, name="image_bytes", allow_head=True)
    app.router.add_get(f"{endpoint}/{{image_id}}/meta", image_meta, name="meta")
    app.router.add_patch(f"{endpoint}/{{image_id}}", link_image, name="link")
    app.router.add_delete(f"{endpoint}/{{image_id}}", delete_image, name="delete")
    app.router.add_get("/api/storage/stats", storage_stats, name="stats")
