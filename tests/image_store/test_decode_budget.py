"""Admission by decoded bytes: the header probe, the ByteBudget, and the pool refusing a second
bomb while the first decodes (the memory figures themselves: test_decode_memory.py)."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from common.app import REGISTRY_KEY
from services.image_store.http.handlers import IMAGE_SERVICE_KEY
from services.image_store.imaging.decode_budget import BudgetExhausted, ByteBudget
from services.image_store.imaging.decode_pool import DecodePool, DecoderBusy
from services.image_store.imaging.dimensions import decoded_bytes
from services.image_store.imaging.pipeline import ValidationLimits
from tests.conftest import auth_headers
from tests.image_store import images
from tests.image_store.conftest import form

LIMITS = ValidationLimits(
    allowed_types=frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"}),
    max_side_px=10000,
    max_pixels=40_000_000,
    max_frames=1,
    reencode=True,
    jpeg_quality=90,
)


def cost(tmp_path: Path, data: bytes, max_frames: int = 1) -> int:
    path = tmp_path / "probe"
    path.write_bytes(data)
    return decoded_bytes(path, max_pixels=LIMITS.max_pixels, max_frames=max_frames)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (lambda: images.webp_bomb(8000, 5000), 8000 * 5000 * 4),
        (lambda: images.webp_claiming_canvas(6000, 4000), 6000 * 4000 * 4),
        (lambda: images.solid("PNG", (64, 48)), 64 * 48 * 4),
        (lambda: images.encode(Image.new("P", (100, 50)), "PNG"), 100 * 50),
        (lambda: images.png_bomb(5000, 4000), 5000 * 4000),  # 1-bit greyscale: one byte a pixel in Pillow
        (lambda: images.solid("JPEG", (320, 200)), 320 * 200 * 4),
        (lambda: images.encode(Image.new("L", (300, 100)), "JPEG"), 300 * 100),
        (lambda: images.jpeg_claiming(6000, 6000), 6000 * 6000 * 4),
        (lambda: images.png_bomb(1, 70000), 70000),  # the side limit is validation's job
        (lambda: images.png_bomb(9000, 9000), 0),  # over IMAGE_MAX_PIXELS: refused from the header
        # Over Pillow's own bomb thresholds (warning, error): read without its check, no warning.
        (lambda: images.jpeg_claiming(12000, 12000), 0),
        (lambda: images.jpeg_claiming(30000, 30000), 0),
        (lambda: images.webp_claiming_canvas(16000, 16000), 0),
        (lambda: images.gif_growing_canvas(6000, 4000), 6000 * 4000 * 4),  # the first frame's extent
        (lambda: images.gif_growing_canvas(9000, 9000), 0),
        # Growing a GIF's canvas runs Pillow's bomb check while opening: its error (or its warning,
        # an error under these tests' filters) costs the worst case, never an exception.
        (lambda: images.gif_growing_canvas(20000, 20000), 40_000_000 * 4),
        (lambda: images.gif_growing_canvas(10000, 10000), 40_000_000 * 4),
        (lambda: b"<html><script>x</script></html>", 0),  # refused as 415 before any decode
        (lambda: b"\xff\xd8\xff\xe0" + b"\x00" * 20, 40_000_000 * 4),  # JPEG whose size cannot be read
    ],
)
def test_decoded_bytes_from_the_header(tmp_path: Path, data, expected: int) -> None:
    assert cost(tmp_path, data()) == expected


def test_png_text_chunks_are_not_inflated_to_read_the_size(tmp_path: Path) -> None:
    """Pillow's PNG reader inflates every text chunk before the pixel data: 63 MiB from this
    67 KB file, per upload, in the server process. The size is read from IHDR alone."""
    data = images.png_with_text_bomb((64, 48))
    assert len(data) < 70_000
    tracemalloc.start()
    try:
        charged = cost(tmp_path, data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert charged == 64 * 48 * 4
    assert peak < 2**20


def test_animations_are_charged_every_frame_when_allowed(tmp_path: Path) -> None:
    gif = images.animation("GIF", frames=5, size=(20, 20))
    assert cost(tmp_path, gif, max_frames=1) == 20 * 20 * 4
    assert cost(tmp_path, gif, max_frames=10) == 20 * 20 * 4 * 10


async def test_byte_budget_waits_then_refuses_and_wakes_on_release() -> None:
    budget = ByteBudget(100)
    async with budget.reserve(70, wait_seconds=0):
        started = time.perf_counter()
        with pytest.raises(BudgetExhausted):
            async with budget.reserve(40, wait_seconds=0.2):
                pass
        assert 0.18 <= time.perf_counter() - started < 1
        assert budget.used == 70

    async def hold(seconds: float) -> None:
        async with budget.reserve(70, wait_seconds=0):
            await asyncio.sleep(seconds)

    holder = asyncio.create_task(hold(0.1))
    await asyncio.sleep(0)
    async with budget.reserve(40, wait_seconds=2) as charged:
        assert charged == 40
        assert budget.used == 40, "admitted once the holder released"
    await holder
    async with budget.reserve(1000, wait_seconds=0) as charged:
        assert charged == 100, "larger than the whole budget: clamped, runs alone"
    assert budget.used == 0


async def test_pool_refuses_a_second_bomb_while_the_first_decodes(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.webp"
    bomb.write_bytes(images.webp_bomb(8000, 5000))
    pool = DecodePool(workers=2, timeout_seconds=60, max_pending=8, budget_bytes=170 * 2**20, budget_wait_seconds=0.3)
    await pool.start()
    try:
        first = asyncio.create_task(pool.process(bomb, tmp_path / "o1", LIMITS))
        await asyncio.sleep(0.2)
        assert pool.budget_used_bytes == 8000 * 5000 * 4
        with pytest.raises(DecoderBusy, match="decode bytes are in use"):
            await pool.process(bomb, tmp_path / "o2", LIMITS)
        assert not (tmp_path / "o2").exists()
        assert (await first).width == 8000
        assert pool.budget_used_bytes == 0
        assert pool.in_flight == 0
    finally:
        await pool.close()


async def test_upload_over_the_budget_is_503_busy_with_retry_after_and_metered(
    settings_for: Any, store_app: Any, aiohttp_client: Any
) -> None:
    """Through HTTP: while the budget is held (as a running bomb would), an upload waits 2 s and
    is refused with the contract's busy error; once released, the same upload is stored."""
    app = store_app(settings_for(IMAGE_DECODE_BUDGET_MB="16", IMAGE_UPLOAD_RATE_PER_MINUTE="0"))
    client = await aiohttp_client(app)
    registry = app[REGISTRY_KEY]
    budget = app[IMAGE_SERVICE_KEY].decoder.budget
    assert registry.get_sample_value("image_store_decode_budget_bytes") == 16 * 2**20
    assert registry.get_sample_value("image_store_decode_budget_used_bytes") == 0
    data = images.solid("PNG")

    async with budget.reserve(16 * 2**20 - 100, wait_seconds=0):
        assert registry.get_sample_value("image_store_decode_budget_used_bytes") == 16 * 2**20 - 100
        started = time.monotonic()
        refused = await client.post("/api/images", data=form(data), headers=auth_headers())
        waited = time.monotonic() - started
        assert refused.status == 503
        body = await refused.json()
        assert body["error"]["code"] == "busy"
        assert refused.headers["Retry-After"] == "2"
        assert waited >= 1.9, "it waited briefly before refusing"

    accepted = await client.post("/api/images", data=form(data), headers=auth_headers())
    assert accepted.status == 201, await accepted.text()
    assert registry.get_sample_value("image_store_decode_budget_used_bytes") == 0
    assert registry.get_sample_value("image_store_uploads_total", {"outcome": "busy"}) == 1
