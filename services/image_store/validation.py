"""Image validation and re-encoding: runs inside a decode worker process, never on the event loop.

Order matters: the type comes from the bytes (libmagic), Pillow may open only that format, the
header's dimensions are checked before any pixel is decoded, then a full decode proves the file
is intact, and re-encoding (after EXIF orientation) drops metadata and trailing payloads.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile, ImageOps

# Pillow format names for each MIME type we can accept.
PILLOW_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}
SNIFF_BYTES = 4096

_magic: Any = None


def _sniffer() -> Any:
    """libmagic handle, created lazily once per worker process."""
    global _magic
    if _magic is None:
        import magic

        _magic = magic.Magic(mime=True)
    return _magic


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    allowed_types: frozenset[str]
    max_side_px: int
    max_pixels: int
    max_frames: int
    reencode: bool
    jpeg_quality: int


@dataclass(frozen=True, slots=True)
class ProcessedImage:
    mime_type: str
    width: int
    height: int
    sha256: str
    size_bytes: int
    timings: dict[str, float] = field(default_factory=dict)


class ImageRejected(Exception):
    """An upload that is not an acceptable image; carries the contract's status and code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[ImageRejected], tuple[int, str, str]]:
        return (ImageRejected, (self.status, self.code, self.message))


def sniff_mime(head: bytes) -> str:
    return str(_sniffer().from_buffer(head))


def process_image_file(source: Path, destination: Path, limits: ValidationLimits) -> ProcessedImage:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with source.open("rb") as stream:
        head = stream.read(SNIFF_BYTES)
    if not head:
        raise ImageRejected(400, "empty_upload", "the upload is empty")
    mime = sniff_mime(head)
    timings["sniff"] = time.perf_counter() - started
    if mime not in limits.allowed_types:
        allowed = ", ".join(sorted(limits.allowed_types))
        raise ImageRejected(
            415, "unsupported_media_type", f"the file is {mime}, not one of the accepted types ({allowed})"
        )

    step = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(source, formats=[PILLOW_FORMATS[mime]])
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(422, "image_too_large", f"the image has too many pixels: {exc}") from exc
        except (OSError, SyntaxError, ValueError, struct.error, EOFError) as exc:
            raise ImageRejected(422, "invalid_image", f"the file is not a readable {mime} image") from exc
        with image:
            _check_dimensions(image, limits)
            frames = getattr(image, "n_frames", 1)
            if frames > limits.max_frames:
                raise ImageRejected(
                    422,
                    "too_many_frames",
                    f"the image has {frames} frames; at most {limits.max_frames} allowed",
                )
            _decode_fully(image, mime)
            timings["decode"] = time.perf_counter() - step
            step = time.perf_counter()
            if limits.reencode:
                out_mime, (width, height) = _reencode(image, mime, destination, limits)
            else:
                out_mime, (width, height) = mime, image.size
                _copy(source, destination)
            timings["reencode"] = time.perf_counter() - step

    step = time.perf_counter()
    sha256, size = _hash_file(destination)
    timings["hash"] = time.perf_counter() - step
    timings["total"] = time.perf_counter() - started
    return ProcessedImage(
        mime_type=out_mime, width=width, height=height, sha256=sha256, size_bytes=size, timings=timings
    )


def _check_dimensions(image: Image.Image, limits: ValidationLimits) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageRejected(422, "invalid_image", "the image has no pixels")
    if max(width, height) > limits.max_side_px:
        raise ImageRejected(
            422,
            "image_too_large",
            f"the image is {width}x{height}; sides are limited to {limits.max_side_px} px",
        )
    if width * height > limits.max_pixels:
        raise ImageRejected(
            422,
            "image_too_large",
            f"the image has {width * height} pixels; at most {limits.max_pixels} are allowed",
        )


def _decode_fully(image: Image.Image, mime: str) -> None:
    try:
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            raise RuntimeError("LOAD_TRUNCATED_IMAGES must stay off")
        for index in range(getattr(image, "n_frames", 1)):
            image.seek(index)
            image.load()
        image.seek(0)
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, IndexError) as exc:
        raise ImageRejected(422, "invalid_image", f"the {mime} image is truncated or corrupt") from exc


def _reencode(
    image: Image.Image, mime: str, destination: Path, limits: ValidationLimits
) -> tuple[str, tuple[int, int]]:
    """Write a clean copy: orientation applied, no EXIF/XMP/comments/text chunks, no trailing bytes."""
    lossless_webp = bool(image.info.get("lossless"))
    # In place: an upright image is not copied (12 MP is 36 MB of pixels to copy for nothing).
    ImageOps.exif_transpose(image, in_place=True)
    oriented = image
    # Pillow's encoders carry some of `info` over by default (a JPEG COM comment, for one), so
    # keep only the colour profile, which is needed to show the pixels as they were meant.
    icc_profile = image.info.get("icc_profile")
    oriented.info = {"icc_profile": icc_profile} if icc_profile else {}
    buffer = io.BytesIO()
    if mime == "image/jpeg":
        if oriented.mode not in ("RGB", "L"):
            oriented = oriented.convert("RGB")
        oriented.save(buffer, "JPEG", quality=limits.jpeg_quality, optimize=False, progressive=False)
        out_mime = "image/jpeg"
    elif mime == "image/webp":
        lossless = lossless_webp
        if oriented.mode not in ("RGB", "RGBA"):
            oriented = oriented.convert("RGBA" if "A" in oriented.mode else "RGB")
        oriented.save(buffer, "WEBP", lossless=lossless, quality=limits.jpeg_quality, method=4)
        out_mime = "image/webp"
    else:  # PNG, and GIF's first frame, stay lossless as PNG
        if oriented.mode == "P" and "transparency" in oriented.info:
            oriented = oriented.convert("RGBA")
        oriented.save(buffer, "PNG", optimize=False, compress_level=6)
        out_mime = "image/png"
    _write_durably(destination, buffer.getbuffer())
    return out_mime, oriented.size


def _write_durably(destination: Path, data: memoryview | bytes) -> None:
    with destination.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _copy(source: Path, destination: Path) -> None:
    _write_durably(destination, source.read_bytes())


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1024 * 1024), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size
