"""Validation and re-encoding in the worker, and the bounded decode pool, on real images."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from common.errors import ApiError
from services.image_store.imaging.decode_pool import DecodePool, DecoderBusy, DecodeTimeout
from services.image_store.imaging.pipeline import ValidationLimits, process_image_file
from tests.image_store.conftest import photo, png

LIMITS = ValidationLimits(
    allowed_types=frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"}),
    max_side_px=10000,
    max_pixels=40_000_000,
    max_frames=1,
    reencode=True,
    jpeg_quality=90,
)


def run(tmp_path: Path, data: bytes, limits: ValidationLimits = LIMITS):
    source, destination = tmp_path / "in", tmp_path / "out"
    source.write_bytes(data)
    return process_image_file(source, destination, limits), destination


def rejected(tmp_path: Path, data: bytes, limits: ValidationLimits = LIMITS) -> ApiError:
    with pytest.raises(ApiError) as caught:
        run(tmp_path, data, limits)
    assert not (tmp_path / "out").exists(), "nothing is written for a rejected image"
    return caught.value


def jpeg_with_orientation_and_gps() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    exif[0x010F] = "RetinaCam"
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    buffer = io.BytesIO()
    Image.new("RGB", (320, 200), (200, 120, 40)).save(buffer, "JPEG", exif=exif, comment=b"secret note")
    return buffer.getvalue()


def test_exif_orientation_is_applied_and_all_metadata_dropped(tmp_path: Path) -> None:
    data = jpeg_with_orientation_and_gps()
    assert b"RetinaCam" in data
    result, out = run(tmp_path, data)
    stored = out.read_bytes()
    assert (result.width, result.height) == (200, 320), "rotated upright"
    with Image.open(out) as image:
        assert image.size == (200, 320)
        assert not image.getexif()
        assert "comment" not in image.info
    assert b"RetinaCam" not in stored
    assert b"secret note" not in stored
    assert result.sha256 == hashlib.sha256(stored).hexdigest()
    assert result.size_bytes == len(stored)
    assert set(result.timings) == {"sniff", "decode", "reencode", "hash", "total"}


def test_png_stays_lossless(tmp_path: Path) -> None:
    data = photo("astronaut.png")
    result, out = run(tmp_path, data)
    assert result.mime_type == "image/png"
    with Image.open(io.BytesIO(data)) as original, Image.open(out) as stored:
        assert original.convert("RGB").tobytes() == stored.convert("RGB").tobytes()


def test_webp_is_accepted_and_stays_webp(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(photo("coffee.png"))) as image:
        image.save(buffer, "WEBP", quality=80)
    result, out = run(tmp_path, buffer.getvalue())
    assert result.mime_type == "image/webp"
    with Image.open(out) as stored:
        assert stored.format == "WEBP"


def test_side_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("1", (70000, 1)).save(buffer, "PNG")
    started = time.perf_counter()
    error = rejected(tmp_path, buffer.getvalue())
    assert time.perf_counter() - started < 1
    assert (error.status, error.code) == (422, "image_too_large")
    assert "70000x1" in error.message


def test_pixel_count_above_pillows_own_limit_is_image_too_large(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("1", (9999, 9999)).save(buffer, "PNG")
    limits = dataclasses.replace(LIMITS, max_pixels=500_000_000)  # only Pillow's own limit applies
    error = rejected(tmp_path, buffer.getvalue(), limits)
    assert (error.status, error.code) == (422, "image_too_large")


def test_animation_beyond_the_frame_limit(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (20, 20), (i * 40, 0, 0)) for i in range(5)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    error = rejected(tmp_path, buffer.getvalue())
    assert (error.status, error.code) == (422, "too_many_frames")
    assert "5 frames" in error.message


def test_corrupt_data_after_a_valid_header(tmp_path: Path) -> None:
    data = bytearray(photo("rocket.jpg"))
    data[600:4000] = b"\x00" * 3400
    data = bytes(data[: len(data) - 2000])
    error = rejected(tmp_path, data)
    assert (error.status, error.code) == (422, "invalid_image")


def pillow_file(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (5, 6, 7)).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "detected"),
    [("BMP", "image/bmp"), ("TIFF", "image/tiff"), ("ICO", "image/vnd.microsoft.icon"), ("PDF", "application/pdf")],
)
def test_other_formats_are_415_naming_the_real_type(tmp_path: Path, fmt: str, detected: str) -> None:
    error = rejected(tmp_path, pillow_file(fmt))
    assert (error.status, error.code) == (415, "unsupported_media_type")
    assert detected in error.message


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.integers(min_value=0, max_value=400), junk=st.binary(min_size=1, max_size=64))
def test_mutated_images_are_stored_or_rejected_never_crash(tmp_path: Path, position: int, junk: bytes) -> None:
    original = png(24, 24)
    data = original[:position] + junk + original[position + len(junk) :]
    try:
        result, out = run(tmp_path, data)
    except ApiError as error:
        status = error.status
    else:
        status = 201
        assert result.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert status in (201, 400, 415, 422)


async def test_pool_carries_rejections_across_processes_and_limits_load(tmp_path: Path) -> None:
    pool = DecodePool(workers=1, timeout_seconds=10, max_pending=1)
    await pool.start()
    try:
        (tmp_path / "html").write_bytes(b"<html><script>x</script></html>")
        with pytest.raises(ApiError) as caught:
            await pool.process(tmp_path / "html", tmp_path / "o1", LIMITS)
        assert (caught.value.status, caught.value.code) == (415, "unsupported_media_type")

        (tmp_path / "photo").write_bytes(photo("rocket.jpg"))
        first = asyncio.create_task(pool.process(tmp_path / "photo", tmp_path / "o2", LIMITS))
        await asyncio.sleep(0)
        with pytest.raises(DecoderBusy):
            await pool.process(tmp_path / "photo", tmp_path / "o3", LIMITS)
        assert (await first).mime_type == "image/jpeg"
    finally:
        await pool.close()


async def test_pool_timeout_replaces_the_stuck_worker(tmp_path: Path) -> None:
    pool = DecodePool(workers=1, timeout_seconds=0.001, max_pending=4)
    await pool.start()
    try:
        big = io.BytesIO()
        Image.new("RGB", (4000, 3000), (9, 9, 9)).save(big, "PNG")
        (tmp_path / "big").write_bytes(big.getvalue())
        with pytest.raises(DecodeTimeout):
            await pool.process(tmp_path / "big", tmp_path / "o1", LIMITS)
        pool._timeout = 30
        (tmp_path / "small").write_bytes(png(10, 10))
        assert (await pool.process(tmp_path / "small", tmp_path / "o2", LIMITS)).width == 10
    finally:
        await pool.close()
