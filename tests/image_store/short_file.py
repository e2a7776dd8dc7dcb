"""A stored file shorter than its announced size (truncated on disk after it was opened): the
answer must end in a cut connection the client notices at once, never a complete-looking
response whose missing bytes the client waits for on a keep-alive connection.

Shared by the asyncio tests (test_serving_short_file.py) and the uvloop ones (on_uvloop/): the
two loops leave the part the socket did not take at once to different code.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from services.image_store import lookup
from tests.conftest import auth_headers
from tests.image_store.conftest import photo, upload

MISSING_BYTES = 1000
# Far longer than a cut connection takes to notice; what a hang would run into.
CLIENT_SECONDS = 5.0


async def assert_a_short_file_cuts_the_connection(store_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    created = await upload(store_client, photo("coffee.png"), filename="coffee.png")
    assert created.status == 201, await created.text()
    image_id = (await created.json())["id"]
    really_open = lookup._open_for_reading

    def announced_longer(path: Path) -> lookup.OpenedFile:
        opened = really_open(path)
        return lookup.OpenedFile(opened.file, opened.size + MISSING_BYTES)

    monkeypatch.setattr(lookup, "_open_for_reading", announced_longer)
    started = time.monotonic()
    response = await store_client.get(
        f"/api/images/{image_id}", headers=auth_headers(), timeout=aiohttp.ClientTimeout(total=CLIENT_SECONDS)
    )
    assert response.status == 200  # the status line went out before the file ran short
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    assert time.monotonic() - started < CLIENT_SECONDS / 2, "the client waited for bytes that never came"
