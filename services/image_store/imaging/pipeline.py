"""Image validation and re-encoding: runs inside a decode worker process, never on the event loop.

Order matters: the type comes from the bytes (libmagic, `sniff`), Pillow may open only that
format, a PNG's chunk checksums are verified (`png_chunks`), the header's dimensions are checked
before any pixel is decoded and a full decode then proves the file is intact (`decode`), and
re-encoding (`reencode`, after EXIF orientation: `metadata`) drops metadata and trailing
payloads; `output` writes the result durably.

Everything here is synchronous and pure apart from writing `destination`. Any failure caused by
the file's content becomes an `ApiError` with the contract's code (`empty_upload`,
`unsupported_media_type`, `invalid_image`, `image_too_large`, `too_many_frames`); only I/O on our
own files (and programming errors) surface as other exceptions. This module is the entry point the
decode worker and the service use.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from PIL import Image, ImageFile

from services.image_store.imaging.decode import (
    PILLOW_FORMATS,
    ValidationLimits,
    check_header,
    decode_fully,
    open_image,
    untrusted_content,
)
from services.image_store.imaging.metadata import exif_orientation, srgb, upright_size
from services.image_store.imaging.output import blocks, write_durably
from services.image_store.imaging.png_chunks import check_png_chunks
from services.image_store.imaging.reencode import reencode
from services.image_store.imaging.sniff import SNIFF_BYTES, accepted_mime, is_lossless, sniffer

__all__ = ["ProcessedImage", "ValidationLimits", "process_image_file", "warm_up"]


def warm_up() -> None:
    """Load libmagic and the Pillow plugins now, so a worker's first upload is not slower."""
    sniffer()
    srgb()
    Image.init()


@dataclass(frozen=True, slots=True)
class ProcessedImage:
    """What was written to `destination`; the caller records metrics from `timings` (seconds)."""

    mime_type: str
    width: int
    height: int
    sha256: str
    size_bytes: int
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What to store: the re-encoded bytes, or (data None) the upload's own bytes unchanged."""

    mime_type: str
    size: tuple[int, int]
    data: bytes | memoryview | None
    encode_started: float  # perf_counter() when re-encoding began, for its timing


def process_image_file(source: Path, destination: Path, limits: ValidationLimits) -> ProcessedImage:
    """Validate `source` and write the bytes to store to `destination` (only if accepted).

    Raises an ApiError for anything wrong with the content; OSError only for our own I/O.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; truncated uploads would pass")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with source.open("rb") as stream:
        head = stream.read(SNIFF_BYTES)
        mime = accepted_mime(head, limits.allowed_types)
        timings["sniff"] = time.perf_counter() - started
        prepared = _decode_and_encode(stream, mime, limits, timings)
        if prepared.data is not None:
            sha256, size, hashing = write_durably(destination, [prepared.data])
        else:
            stream.seek(0)
            sha256, size, hashing = write_durably(destination, blocks(stream))
    timings["reencode"] = time.perf_counter() - prepared.encode_started - hashing
    timings["hash"] = hashing
    timings["total"] = time.perf_counter() - started
    width, height = prepared.size
    return ProcessedImage(
        mime_type=prepared.mime_type, width=width, height=height, sha256=sha256, size_bytes=size, timings=timings
    )


def _decode_and_encode(stream: IO[bytes], mime: str, limits: ValidationLimits, timings: dict[str, float]) -> _Prepared:
    """Decode every pixel within the limits, then re-encode (or, with re-encoding off, only measure)."""
    step = time.perf_counter()
    with untrusted_content(PILLOW_FORMATS[mime]):
        if mime == "image/png":
            check_png_chunks(stream)  # Pillow does not check the pixel data's CRCs
        lossless = is_lossless(mime, stream)
        with open_image(stream, mime, limits) as image:
            frames = check_header(image, mime, limits)
            decode_fully(image, frames, limits)
            timings["decode"] = time.perf_counter() - step
            step = time.perf_counter()
            orientation = exif_orientation(image)
            if not limits.reencode:
                return _Prepared(mime, upright_size(image.size, orientation), None, step)
            encoded = reencode(image, mime, frames, orientation, lossless, limits)
            return _Prepared(encoded.mime_type, encoded.size, encoded.data, step)
