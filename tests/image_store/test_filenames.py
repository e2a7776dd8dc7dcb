"""Content-Disposition of upload parts is parsed by the RFC grammar, quotes and all (issue 8 item 9).

aiohttp's parser splits at every `;`, even inside a quoted string, so the legal name
`a;b=c; x.png` made the part nameless and the upload a 400.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from common.content_disposition import MalformedDisposition, parse_form_data_disposition
from tests.conftest import auth_headers
from tests.image_store.conftest import png, raw_multipart, row_counts, stored_files, temp_files, upload


@pytest.mark.parametrize(
    "filename",
    ["a;b=c; x.png", 'say "cheese".png', "name=evil.png; filename=other.png", "café ☕;.png", "a\\b;c.png"],
)
async def test_quoted_names_with_separators_are_accepted(
    store_client: TestClient, db: asyncpg.Connection, filename: str
) -> None:
    response = await upload(store_client, png(), filename=filename)
    assert response.status == 201, await response.text()
    record = await response.json()
    expected = filename.replace("\\", "/").rsplit("/", 1)[-1]  # the last path component is kept
    assert record["original_filename"] == expected
    assert await db.fetchval("SELECT original_filename FROM images WHERE id = $1", record["id"]) == expected
    served = await store_client.get(f"/api/images/{record['id']}", headers=auth_headers())
    assert served.status == 200
    assert served.content_disposition is not None
    assert served.content_disposition.filename == expected


async def test_a_hand_written_part_with_the_reported_name(store_client: TestClient) -> None:
    body, content_type = raw_multipart(b"a;b=c; x.png", png())
    response = await store_client.post(
        "/api/images", data=body, headers={**auth_headers(), "Content-Type": content_type}
    )
    assert response.status == 201, await response.text()
    assert (await response.json())["original_filename"] == "a;b=c; x.png"


@pytest.mark.parametrize(
    "disposition",
    [
        b'form-data; name="file"; filename="unterminated.png',
        b'form-data; name="file"; name="other"; filename="a.png"',
        b'attachment; name="file"; filename="a.png"',
        b'form-data; name="file"; filename="a\xff.png"',
    ],
)
async def test_malformed_dispositions_are_400_and_store_nothing(
    store_client: TestClient, db: asyncpg.Connection, storage_root: Path, disposition: bytes
) -> None:
    boundary = "retina-test-boundary"
    body = (
        f"--{boundary}\r\n".encode()
        + b"Content-Disposition: "
        + disposition
        + b"\r\nContent-Type: image/png\r\n\r\n"
        + png()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = await store_client.post(
        "/api/images",
        data=body,
        headers={**auth_headers(), "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "bad_request"
    assert error["message"] in {"malformed multipart body", "a file part named 'file' is required"}
    assert await row_counts(db) == (0, 0)
    assert stored_files(storage_root) == []
    assert temp_files(storage_root) == []


@pytest.mark.parametrize(
    ("header", "name", "filename"),
    [
        ('form-data; name="file"; filename="a;b=c; x.png"', "file", "a;b=c; x.png"),
        ("form-data; name=file; filename=plain.png", "file", "plain.png"),
        ('Form-Data; Name="file"; FILENAME="x.png"', "file", "x.png"),
        ("form-data; name=\"file\"; filename*=UTF-8''caf%C3%A9.png", "file", "café.png"),
        ('form-data; name="message_id"', "message_id", None),
    ],
)
def test_parser(header: str, name: str, filename: str | None) -> None:
    parsed = parse_form_data_disposition(header)
    assert (parsed.name, parsed.filename) == (name, filename)


@pytest.mark.parametrize("header", [None, "", "inline", 'form-data; filename="a\x01.png"', 'form-data; name="a'])
def test_parser_refuses(header: str | None) -> None:
    with pytest.raises(MalformedDisposition):
        parse_form_data_disposition(header)
