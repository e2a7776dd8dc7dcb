"""HTTP handlers: parse the request, call ImageService, shape the response. Nothing else."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import BodyPartReader, MultipartReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from common.app import AUTH_KEY
from common.content_disposition import parse_form_data_disposition
from common.errors import BadRequest, PayloadTooLarge, RequestTimeout, StoredImageNotFound, UnsupportedMediaType
from common.http.body_timeout import BodyReadTimeout, read_limits
from common.http.json_body import read_json_object
from common.http.multipart import read_small_field
from common.http.paging import page_params
from common.ids import parse_uuid
from services.image_store.http.conditional import Precondition, evaluate_preconditions, select_range
from services.image_store.http.serving import ImageBytesResponse, image_headers
from services.image_store.http.serving_s3 import object_response
from services.image_store.lookup import MAX_PAGE_SIZE
from services.image_store.models import ImageRow
from services.image_store.service import ImageService
from services.image_store.settings import ImageStoreSettings
from services.image_store.uploads import UploadSession

log = structlog.get_logger("retina.image_store")

IMAGE_SERVICE_KEY = web.AppKey("image_service", ImageService)

CHUNK_SIZE = 256 * 1024
# Room for multipart boundaries and the small fields next to the file.
MULTIPART_OVERHEAD = 64 * 1024
MAX_PARTS = 8
MAX_FIELD_BYTES = 1024
DEFAULT_PAGE_SIZE = 50


def parse_image_id(raw: str) -> uuid.UUID:
    """A malformed ID is indistinguishable from a missing image."""
    image_id = parse_uuid(raw)
    if image_id is None:
        raise StoredImageNotFound()
    return image_id


def parse_optional_uuid(raw: str | None, field: str) -> uuid.UUID | None:
    """Absent (or JSON null) means none; an empty string is a malformed ID, as the document says."""
    if raw is None:
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
        fields, filename = await _receive_body(request, session, service.settings)
        stored = await session.commit(
            original_filename=filename,
            message_id=parse_optional_uuid(fields.get("message_id"), "message_id"),
        )
    body = record_json(service, stored.row)
    return web.json_response(body, status=201, headers={"Location": service.image_location(stored.row.id)})


async def _receive_body(
    request: web.Request, session: UploadSession, settings: ImageStoreSettings
) -> tuple[dict[str, str], str | None]:
    """Read the whole body under the idle and overall clocks; a slow client gets 408 and a closed
    connection (keeping it open would let it hold the handler and its temp file for ever)."""
    try:
        async with read_limits(
            lambda: request.content.total_bytes,
            idle_seconds=settings.upload_idle_timeout_seconds,
            deadline_seconds=settings.upload_deadline_seconds,
        ):
            if request.content_type == "multipart/form-data":
                return await _receive_multipart(request, session)
            if request.content_type.startswith("image/") or request.content_type == "application/octet-stream":
                await session.receive(request.content.iter_chunked(CHUNK_SIZE))
                return dict(request.query), request.query.get("filename")
            raise UnsupportedMediaType("send multipart/form-data with one part named 'file' (or a raw image body)")
    except BodyReadTimeout as exc:
        log.info("upload_timed_out", reason=exc.reason, received_bytes=request.content.total_bytes)
        raise RequestTimeout(exc.message) from exc


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
            # Not part.name / part.filename: aiohttp's parser splits quoted names at ';'.
            disposition = parse_form_data_disposition(part.headers.get(hdrs.CONTENT_DISPOSITION))
            if disposition.name == "file":
                filename = disposition.filename
                await session.receive(_part_chunks(part))
            else:
                fields[disposition.name or ""] = await read_small_field(part, MAX_FIELD_BYTES)
    except (ValueError, AssertionError, UnicodeDecodeError, HttpProcessingError) as exc:
        # aiohttp's messages can echo raw header bytes; keep ours short and printable.
        raise BadRequest("malformed multipart body") from exc
    if session.received is None:
        raise BadRequest("a file part named 'file' is required")
    return fields, filename


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK_SIZE):
        yield chunk


# ---- serving -----------------------------------------------------------------------------


async def serve_image(request: web.Request) -> web.StreamResponse:
    """GET/HEAD of the bytes: authorise, decide preconditions and range once, then send."""
    service = service_of(request)
    image_id = parse_image_id(request.match_info["image_id"])
    query = request.query
    if "sig" in query or "exp" in query:
        row = await service.get_signed(image_id, query.get("exp", ""), query.get("sig", ""))
    else:
        caller = request.app[AUTH_KEY].caller(request)
        row = await service.get_for_serving(image_id, caller.user_id)
    headers = image_headers(row, service.settings.cache_max_age_seconds, service.settings.cross_origin_resource_policy)
    if evaluate_preconditions(request.if_match, request.if_none_match, row.sha256) is Precondition.NOT_MODIFIED:
        del headers["Content-Type"]
        return web.Response(status=304, headers=headers)
    path = service.file_path(row)
    if path is None:  # object storage serves (proxy) or hands out (redirect) the bytes
        return await object_response(request, service, row, headers)
    opened = await service.open_file(row, path)
    try:
        byte_range = select_range(
            request.headers.get(hdrs.RANGE), request.headers.get(hdrs.IF_RANGE), row.sha256, opened.size
        )
    except BaseException:
        opened.file.close()
        raise
    return ImageBytesResponse(opened.file, opened.size, byte_range, headers)


async def count_served(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: the final status of byte responses (200/206/304/416) is known here."""
    if request.match_info.route.name == "image_bytes" and request.method != "OPTIONS":  # not CORS preflights
        request.app[IMAGE_SERVICE_KEY].metrics.count_served(response.status)


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
    body = await read_json_object(request, max_bytes=request.client_max_size)
    if set(body) != {"message_id"}:
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
    message_id = parse_optional_uuid(request.query.get("message_id"), "message_id")
    page = page_params(request.query, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
    rows, next_cursor = await service.list(caller.user_id, message_id=message_id, limit=page.limit, cursor=page.cursor)
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
