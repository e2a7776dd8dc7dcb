"""POST /api/images: stored correctly, and every bad input refused with nothing left behind."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import asyncpg
import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient
from PIL import Image

from services.image_store.filenames import content_disposition, sanitize_filename
from services.image_store.http.handlers import MAX_FIELD_BYTES
from tests.conftest import SERVICE_TOKEN, auth_headers
from tests.image_store.conftest import (
    BACKENDS,
    form,
    make_message,
    photo,
    png,
    raw_multipart,
    row_counts,
    stored_files,
    temp_files,
    upload,
)
from tests.image_store.images import png_chunks, with_bad_crc
from tests.image_store.s3_support import BlobView, key_of

STORAGE_BACKENDS = BACKENDS  # every test here that reaches storage runs on both (conftest)


async def assert_nothing_stored(db: asyncpg.Connection, blobs: BlobView) -> None:
    assert await row_counts(db) == (0, 0), "no half-written rows"
    assert blobs.keys() == [], "no published files"
    assert blobs.temp_files() == [], "no temp files"
    assert blobs.pending_multipart_uploads() == [], "no unfinished multipart uploads"


async def expect_error(response, status: int, code: str, message_part: str = "") -> dict:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["error"]["code"] == code, body
    assert message_part in body["error"]["message"], body
    return body


@pytest.mark.postgres_paths
async def test_png_upload_is_stored_content_addressed(
    store_client: TestClient, db: asyncpg.Connection, blobs: BlobView
) -> None:
    response = await upload(store_client, png(64, 48), filename="holiday.png")
    assert response.status == 201, await response.text()
    record = await response.json()
    assert record["mime_type"] == "image/png"
    assert (record["width"], record["height"]) == (64, 48)
    assert record["owner_id"] == "alice"
    assert record["original_filename"] == "holiday.png"
    assert record["message_id"] is None
    assert record["expires_at"] is not None, "IMAGE_RETENTION_DAYS defaults to 30"
    assert record["url"].startswith(f"/api/images/{record['id']}?exp=")
    assert response.headers["Location"] == f"/api/images/{record['id']}"
    sha = record["sha256"]
    assert blobs.keys() == [key_of(sha)]
    stored = blobs.read(key_of(sha))
    assert hashlib.sha256(stored).hexdigest() == sha
    assert len(stored) == record["size_bytes"]
    assert await row_counts(db) == (1, 1)
    assert blobs.temp_files() == []


async def test_real_photo_is_reencoded_without_exif(store_client: TestClient, blobs: BlobView) -> None:
    original = photo("rocket.jpg")
    response = await upload(store_client, original, filename="rocket.jpg", content_type="image/jpeg")
    assert response.status == 201, await response.text()
    record = await response.json()
    assert record["mime_type"] == "image/jpeg"
    sha = record["sha256"]
    data = blobs.read(key_of(sha))
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert image.size == (record["width"], record["height"])
        assert not image.getexif(), "metadata is stripped"


async def test_same_bytes_from_two_owners_share_one_file(
    store_client: TestClient, db: asyncpg.Connection, blobs: BlobView
) -> None:
    data = photo("chelsea.png")
    first = await (await upload(store_client, data, user="alice")).json()
    second = await (await upload(store_client, data, user="bob")).json()
    assert first["id"] != second["id"]
    assert first["sha256"] == second["sha256"]
    assert (first["owner_id"], second["owner_id"]) == ("alice", "bob")
    assert await row_counts(db) == (2, 1)
    assert len(blobs.keys()) == 1
    metrics = await (await store_client.get("/metrics")).text()
    assert "image_store_dedup_hits_total 1.0" in metrics
    assert 'image_store_uploads_total{outcome="duplicate"} 1.0' in metrics
    assert 'image_store_uploads_total{outcome="stored"} 1.0' in metrics


async def test_raw_image_body_upload(store_client: TestClient) -> None:
    response = await store_client.post(
        "/api/images?filename=raw.png",
        data=png(10, 10),
        headers={**auth_headers(), "Content-Type": "image/png"},
    )
    assert response.status == 201, await response.text()
    record = await response.json()
    assert record["original_filename"] == "raw.png"


async def test_png_declared_as_jpeg_is_stored_as_png(store_client: TestClient) -> None:
    response = await upload(store_client, png(), filename="lies.jpg", content_type="image/jpeg")
    assert response.status == 201
    assert (await response.json())["mime_type"] == "image/png"


async def test_polyglot_payload_does_not_survive(store_client: TestClient, blobs: BlobView) -> None:
    payload = b"<script>alert(document.cookie)</script>PK\x03\x04zipdata"
    response = await upload(store_client, png(32, 32) + payload)
    assert response.status == 201, await response.text()
    sha = (await response.json())["sha256"]
    data = blobs.read(key_of(sha))
    assert b"<script>" not in data
    assert b"PK\x03\x04" not in data


@pytest.mark.parametrize(
    ("raw_name", "expected"),
    [
        ("../../etc/passwd.png", "passwd.png"),
        ("..\\..\\windows\\evil.png", "evil.png"),
        ("é" * 300 + ".png", "é" * 251 + ".png"),
    ],
)
async def test_hostile_file_names_are_neutralised(store_client: TestClient, raw_name: str, expected: str) -> None:
    body, content_type = raw_multipart(raw_name.encode(), png())
    response = await store_client.post(
        "/api/images", data=body, headers={**auth_headers(), "Content-Type": content_type}
    )
    assert response.status == 201, await response.text()
    record = await response.json()
    assert record["original_filename"] == expected
    served = await store_client.get(f"/api/images/{record['id']}", headers=auth_headers())
    disposition = served.headers["Content-Disposition"]
    assert disposition.startswith("inline; filename=")
    assert "\r" not in disposition
    assert "\n" not in disposition
    assert "/" not in disposition.split("filename*=")[0]


@pytest.mark.storage_untouched
@pytest.mark.parametrize("raw_name", [b"bad\r\nSet-Cookie: x=1.png", b"tab\tand\x01nul\x7f.png"])
async def test_control_characters_in_part_headers_are_refused(
    store_client: TestClient, db: asyncpg.Connection, blobs: BlobView, raw_name: bytes
) -> None:
    body, content_type = raw_multipart(raw_name, png())
    response = await store_client.post(
        "/api/images", data=body, headers={**auth_headers(), "Content-Type": content_type}
    )
    # Depending on where the header breaks, aiohttp reports a malformed part or a part without a name.
    error = await expect_error(response, 400, "bad_request")
    assert "\r" not in error["error"]["message"]
    await assert_nothing_stored(db, blobs)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("bad\r\nSet-Cookie: x=1.png", "badSet-Cookie: x=1.png"),
        ("tab\tand\x00nul\x7f\u202e.png", "tabandnul.png"),
        ("  ...  ", None),
        ("", None),
        ("C:\\Users\\me\\cat.png", "cat.png"),
        ("x" * 400, "x" * 255),
    ],
)
def test_sanitize_filename(raw: str, expected: str | None) -> None:
    assert sanitize_filename(raw) == expected


def test_content_disposition_cannot_inject_headers() -> None:
    header = content_disposition('a"; filename="evil.html\r\nX: y', fallback="id")
    assert "\r" not in header
    assert "\n" not in header
    assert header.startswith('inline; filename="a__ filename=_evil.html__X: y"')


# ---- refusals ------------------------------------------------------------------------------


@pytest.mark.storage_untouched
async def test_honest_oversized_content_length_is_refused_up_front(
    store_client: TestClient, db: asyncpg.Connection, blobs: BlobView
) -> None:
    big = b"\xff\xd8\xff" + b"\0" * (3 * 1024 * 1024)
    response = await upload(store_client, big, filename="big.jpg", content_type="image/jpeg")
    await expect_error(response, 413, "payload_too_large", "2 MiB")
    await assert_nothing_stored(db, blobs)


async def test_chunked_oversized_upload_is_cut_off_at_the_limit(
    store_client: TestClient, db: asyncpg.Connection, blobs: BlobView
) -> None:
    sent = 0

    async def body():
        nonlocal sent
        for _ in range(64):
            sent += 64 * 1024
            yield b"\x89PNG" + b"\0" * (64 * 1024 - 4)

    response = await store_client.post(
        "/api/images", data=body(), headers={**auth_headers(), "Content-Type": "image/png"}
    )
    await expect_error(response, 413, "payload_too_large")
    await assert_nothing_stored(db, blobs)


@pytest.mark.storage_untouched
async def test_lying_content_length_is_not_trusted(
    store_client: TestClient, db: asyncpg.Connection, blobs: BlobView
) -> None:
    """A small declared length with a large multipart body: only the declared bytes are read."""
    boundary = "xyz"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png(200, 200)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    reader, writer = await asyncio.open_connection(store_client.host, store_client.port)
    head = (
        "POST /api/images HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {SERVICE_TOKEN}\r\nX-User-Id: alice\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        "Content-Length: 150\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    assert status_line.split()[1] in (b"400", b"422"), status_line
    await assert_nothing_stored(db, blobs)


@pytest.mark.storage_untouched
async def test_empty_file_part(store_client: TestClient, db: asyncpg.Connection, blobs: BlobView) -> None:
    await expect_error(await upload(store_client, b""), 400, "empty_upload")
    await assert_nothing_stored(db, blobs)


@pytest.mark.storage_untouched
async def test_missing_file_part(store_client: TestClient, db: asyncpg.Connection, blobs: BlobView) -> None:
    body = FormData(default_to_multipart=True)
    body.add_field("message_id", "")
    body.add_field("other", "x")
    response = await store_client.post("/api/images", data=body, headers=auth_headers())
    await expect_error(response, 400, "bad_request", "'file' is required")
    await assert_nothing_stored(db, blobs)


@pytest.mark.storage_untouched
async def test_duplicate_file_part(store_client: TestClient, db: asyncpg.Connection, blobs: BlobView) -> None:
    body = FormData()
    body.add_field("file", png(), filename="a.png", content_type="image/png")
    body.add_field("file", png(8, 8), filename="b.png", content_type="image/png")
    response = await store_client.post("/api/images", data=body, headers=auth_headers())
    await expect_error(response, 400, "bad_request", "exactly one file part")
    await assert_nothing_stored(db, blobs)


@pytest.mark.storage_untouched
async def test_too_many_parts(store_client: TestClient, db: asyncpg.Connection, blobs: BlobView) -> None:
    body = FormData()
    for index in range(12):
        body.add_field(f"field{index}", "x")
    body.add_field("file", png(), filename="a.png", content_type="image/png")
    response = await store_client.post("/api/images", data=body, headers=auth_headers())
    await expect_error(response, 400, "bad_request", "at most 8 multipart parts")
    await assert_nothing_stored(db, blobs)


@pytest.mark.storage_untouched
async def test_oversized_side_field(store_client: TestClient, db: asyncpg.Connection, blobs: BlobView) -> None:
    response = await upload(store_client, png(), message_id="x" * 5000)
    await expect_error(response, 400, "bad_request", "longer than 1024 bytes")
    await assert_nothing_stored(db, blobs)


@pytest.mark.storage_untouched
async def test_not_multipart(store_client: TestClient, db: asyncpg.Connection, blobs: BlobView) -> None:
    response = await store_client.post(
        "/api/images", data=b"hello", headers={**auth_headers(), "Content-Type": "text/plain"}
    )
    await expect_error(response, 415, "unsupported_media_type", "multipart/form-data")
    await assert_nothing_stored(db, blobs)


@pytest.mark.storage_untouched
async def test_malformed_multipart(store_client: TestClient, db: asyncpg.Connection, blobs: BlobView) -> None:
    response = await store_client.post(
        "/api/images",
        data=b"this is not multipart at all",
        headers={**auth_headers(), "Content-Type": "multipart/form-data; boundary=abc"},
    )
    await expect_error(response, 400, "bad_request")
    await assert_nothing_stored(db, blobs)


@pytest.mark.storage_untouched
@pytest.mark.parametrize(
    ("data", "filename", "content_type"),
    [
        (b"<html><body><script>alert(1)</script></body></html>", "cat.jpg", "image/jpeg"),
        (b"#!/bin/sh\nrm -rf /\n", "cat.jpg", "image/jpeg"),
        (
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"></svg>',
            "x.svg",
            "image/svg+xml",
        ),
    ],
    ids=["html-as-jpg", "script-as-jpg", "svg"],
)
async def test_type_confusion_is_415(
    store_client: TestClient, db: asyncpg.Connection, blobs: BlobView, data, filename, content_type
) -> None:
    response = await upload(store_client, data, filename=filename, content_type=content_type)
    await expect_error(response, 415, "unsupported_media_type")
    await assert_nothing_stored(db, blobs)


@pytest.mark.storage_untouched
async def test_format_outside_allow_list(store_client: TestClient, db: asyncpg.Connection, blobs: BlobView) -> None:
    gif = photo("no_time_for_that_tiny.gif")
    response = await upload(store_client, gif, filename="a.gif", content_type="image/gif")
    await expect_error(response, 415, "unsupported_media_type", "image/gif")
    await assert_nothing_stored(db, blobs)


@pytest.mark.storage_untouched
async def test_pixel_bomb(store_client: TestClient, db: asyncpg.Connection, blobs: BlobView) -> None:
    buffer = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buffer, "PNG")  # ~18 KB file, 144 MP
    response = await upload(store_client, buffer.getvalue())
    await expect_error(response, 422, "image_too_large")
    await assert_nothing_stored(db, blobs)


async def test_truncated_image(store_client: TestClient, db: asyncpg.Connection, blobs: BlobView) -> None:
    data = photo("rocket.jpg")
    response = await upload(store_client, data[: len(data) // 2], filename="cut.jpg", content_type="image/jpeg")
    await expect_error(response, 422, "invalid_image")
    await assert_nothing_stored(db, blobs)


def test_damage_lands_where_the_cases_below_say() -> None:
    """The real photos' chunk layout the cases rely on: moon.png has text after its pixel data
    (which Pillow reads without checking CRCs), chelsea.png an ancillary chunk before it."""
    assert [kind for kind, _, _ in png_chunks(photo("moon.png"))][-3:] == [b"tEXt", b"tEXt", b"IEND"]
    assert [kind for kind, _, _ in png_chunks(photo("chelsea.png"))][:4] == [b"IHDR", b"iCCP", b"pHYs", b"iTXt"]
    assert sum(kind == b"IDAT" for kind, _, _ in png_chunks(photo("chelsea.png"))) == 15


@pytest.mark.storage_untouched
@pytest.mark.parametrize(
    ("data", "chunk"),
    [
        (with_bad_crc(png(64, 48), b"IDAT"), "IDAT"),
        (with_bad_crc(photo("chelsea.png"), b"IDAT", index=7), "IDAT"),
        (with_bad_crc(photo("moon.png"), b"tEXt", index=-1), "tEXt"),
        (with_bad_crc(photo("chelsea.png"), b"pHYs"), "pHYs"),
        (with_bad_crc(png(64, 48), b"IHDR"), "IHDR"),
        (with_bad_crc(photo("chelsea.png"), b"IHDR"), "IHDR"),
        (with_bad_crc(photo("chelsea.png"), b"IEND"), "IEND"),
    ],
    ids=[
        "pillow-idat",
        "photo-idat",
        "photo-text-after-pixels",
        "photo-ancillary-before-pixels",
        "pillow-ihdr",
        "photo-ihdr",
        "photo-iend",
    ],
)
async def test_png_with_a_wrong_chunk_crc_is_refused(
    store_client: TestClient, db: asyncpg.Connection, storage_root: Path, data: bytes, chunk: str
) -> None:
    """A PNG whose pixel data (or any other chunk) fails its CRC is as corrupt as any other
    damaged image: 422 naming the chunk, and no row, no file, no temp file left."""
    response = await upload(store_client, data, filename="damaged.png")
    body = await expect_error(response, 422, "invalid_image")
    message = body["error"]["message"]
    assert message.startswith("the file is not a valid PNG image"), message
    assert f"CRC checksum of its {chunk} chunk does not match" in message
    assert await row_counts(db) == (0, 0)
    assert stored_files(storage_root) == []
    assert temp_files(storage_root) == []


@pytest.mark.storage_untouched
@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 401, "unauthorized"),
        ({"Authorization": "Bearer nope-nope-nope-nope", "X-User-Id": "alice"}, 401, "unauthorized"),
        ({"Authorization": f"Bearer {SERVICE_TOKEN}"}, 400, "bad_request"),
    ],
    ids=["no-token", "bad-token", "no-user"],
)
async def test_unauthorised_upload(
    store_client: TestClient, db: asyncpg.Connection, blobs: BlobView, headers, status, code
) -> None:
    response = await store_client.post("/api/images", data=form(png()), headers=headers)
    await expect_error(response, status, code)
    await assert_nothing_stored(db, blobs)


async def test_upload_disabled_but_serving_continues(client_for, db: asyncpg.Connection) -> None:
    enabled = await client_for()
    record = await (await upload(enabled, png())).json()
    disabled = await client_for(IMAGE_UPLOAD_ENABLED="false")
    await expect_error(await upload(disabled, png(9, 9)), 503, "upload_disabled")
    served = await disabled.get(f"/api/images/{record['id']}", headers=auth_headers())
    assert served.status == 200
    assert await row_counts(db) == (1, 1)


async def test_rate_limit_per_owner(client_for) -> None:
    client = await client_for(IMAGE_UPLOAD_RATE_PER_MINUTE="2")
    for size in (4, 5):
        assert (await upload(client, png(size, size))).status == 201
    body = await expect_error(await upload(client, png(6, 6)), 429, "rate_limited")
    assert "try again" in body["error"]["message"]
    limited = await upload(client, png(7, 7))
    assert int(limited.headers["Retry-After"]) >= 1
    assert (await upload(client, png(6, 6), user="bob")).status == 201, "other owners are unaffected"


async def test_message_link_on_upload(store_client: TestClient, db: asyncpg.Connection) -> None:
    mine = await make_message(db, "alice")
    theirs = await make_message(db, "bob")
    response = await upload(store_client, png(), message_id=mine)
    assert response.status == 201
    assert (await response.json())["message_id"] == mine
    assert await db.fetchval("SELECT has_images FROM messages WHERE id = $1", mine) is True
    await expect_error(await upload(store_client, png(5, 5), message_id=theirs), 400, "bad_request", "message_id")
    await expect_error(await upload(store_client, png(5, 5), message_id="nope"), 400, "bad_request", "UUID")
    assert await row_counts(db) == (1, 1)


async def test_database_failure_after_file_written_leaves_no_orphan(
    store_client: TestClient, db: asyncpg.Connection, blobs: BlobView
) -> None:
    await db.execute(
        """
        CREATE FUNCTION refuse_images() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'simulated database failure'; END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON images FOR EACH ROW EXECUTE FUNCTION refuse_images();
        """
    )
    response = await upload(store_client, png(33, 33))
    body = await expect_error(response, 500, "internal_error")
    assert "simulated" not in body["error"]["message"]
    await assert_nothing_stored(db, blobs)


async def test_metrics_count_refusals(store_client: TestClient) -> None:
    await upload(store_client, b"")
    await upload(store_client, b"<html></html>", filename="x.jpg")
    await upload(store_client, png())
    text = await (await store_client.get("/metrics")).text()
    assert 'image_store_uploads_total{outcome="invalid"} 1.0' in text
    assert 'image_store_uploads_total{outcome="unsupported_type"} 1.0' in text
    assert 'image_store_uploads_total{outcome="stored"} 1.0' in text
    assert 'image_store_processing_duration_seconds_count{step="decode"} 1.0' in text


@pytest.mark.storage_untouched
@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"1" * (MAX_FIELD_BYTES + 1), f"field 'message_id' is longer than {MAX_FIELD_BYTES} bytes"),
        (b"\xff\xfe not UTF-8", "field 'message_id' is not UTF-8 text"),
    ],
)
async def test_an_oversized_or_undecodable_text_field_is_refused(
    store_client: TestClient, db: asyncpg.Connection, blobs: BlobView, value: bytes, message: str
) -> None:
    """The text fields beside the file: bounded in memory and decoded strictly, and the file that came
    first is not kept."""
    boundary = "retina-field-boundary"
    image_part, _ = raw_multipart(b"pic.png", png(), boundary)
    body = image_part.removesuffix(f"--{boundary}--\r\n".encode()) + (
        f'--{boundary}\r\nContent-Disposition: form-data; name="message_id"\r\n\r\n'.encode()
        + value
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = await store_client.post(
        "/api/images",
        data=body,
        headers={**auth_headers(), "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    await expect_error(response, 400, "bad_request", message)
    await assert_nothing_stored(db, blobs)
