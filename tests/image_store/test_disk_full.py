"""A full volume: 507 insufficient_storage, and nothing left behind. Uses a real tiny tmpfs (`tiny_volume`)."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from tests.image_store.conftest import photo, row_counts, stored_files, temp_files, upload


async def test_disk_full_while_receiving(client_for, db: asyncpg.Connection, tiny_volume: Path) -> None:
    client = await client_for(IMAGE_STORAGE_PATH=str(tiny_volume))
    data = photo("astronaut.png")
    assert len(data) > 256 * 1024, "the photo must not fit on the volume"
    response = await upload(client, data, filename="astronaut.png")
    assert response.status == 507, await response.text()
    body = await response.json()
    assert body["error"]["code"] == "insufficient_storage"
    assert body["error"]["message"] == "the image volume is full"
    assert temp_files(tiny_volume) == []
    assert stored_files(tiny_volume) == []
    assert await row_counts(db) == (0, 0)
    metrics = await (await client.get("/metrics")).text()
    assert 'image_store_uploads_total{outcome="insufficient_storage"} 1.0' in metrics
