"""Image bytes on asyncio's loop when the file is shorter than announced (short_file.py)."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from tests.image_store.short_file import assert_a_short_file_cuts_the_connection


async def test_a_file_shorter_than_announced_cuts_the_connection(
    store_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await assert_a_short_file_cuts_the_connection(store_client, monkeypatch)
