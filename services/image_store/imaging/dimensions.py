"""What an image will cost to decode, read from its header by Pillow without decoding it.

Two users: validation (inside a worker) refuses oversized dimensions before Pillow allocates
anything, and the decode pool (in the server process, in a thread) charges each decode against
its byte budget before admitting it. Pillow's format readers do the reading, not a parser of our
own; its open is lazy (size and mode come from the header, pixels only on `load()`). Three of
its behaviours shape how they are called:

- `Image.open` runs Pillow's own decompression-bomb check (a warning above MAX_IMAGE_PIXELS, an
  error above twice that). Our limits must come first, so a refusal names the dimensions and the
  limit; and in the server process the check's warning cannot be silenced safely from a thread
  (`warnings.catch_warnings` swaps the process-wide filters). So the format's reader class is
  called directly, which parses the header without that check.
- Pillow's WebP reader is not lazy: it reads the whole file and libwebp allocates the canvas
  while opening. For WebP only the size is read, by the function Pillow itself runs on the first
  30 bytes before it creates the decoder (`WebPImagePlugin._get_size`).
- Pillow's PNG reader inflates every compressed text chunk before the pixel data (up to 64 MiB,
  from a 65 KB file). The size and mode sit in IHDR, the first chunk, so only that chunk is read,
  by Pillow's chunk reader (`PngImagePlugin.PngStream`).

JPEG and GIF readers run whole: they read markers and extension blocks up to the first pixel
data and inflate nothing. A JPEG's extra MPF images are not frames of the picture (only the
primary image is decoded), so the plain JPEG reader is used, not the factory that adopts MPO.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from PIL import GifImagePlugin, Image, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

# Bytes Pillow allocates per decoded pixel: one for the modes 1, L and P; four for RGB (kept as
# RGBX), RGBA, CMYK, LA and every other mode it reads from these formats (16-bit greyscale takes
# two and is charged four).
WIDE_PIXEL_BYTES: Final = 4
NARROW_PIXEL_BYTES: Final = 1
_NARROW_MODES: Final = frozenset({"1", "L", "P"})
_SIGNATURE_BYTES: Final = 16  # what Image.open hands each format's signature check
_PNG_SIGNATURE_BYTES: Final = 8
_WEBP_HEADER_BYTES: Final = 30  # what WebPImagePlugin._get_size reads
_ANIMATED_FORMATS: Final = frozenset({"PNG", "GIF", "WEBP"})


@dataclass(frozen=True, slots=True)
class Header:
    size: tuple[int, int]
    pixel_bytes: int  # per decoded pixel, NARROW_PIXEL_BYTES or WIDE_PIXEL_BYTES


def _png(stream: IO[bytes]) -> Header | None:
    stream.seek(_PNG_SIGNATURE_BYTES)
    chunks = PngImagePlugin.PngStream(stream)
    kind, position, length = chunks.read()
    if kind != b"IHDR":
        return None
    chunks.call(kind, position, length)
    return Header(chunks.im_size, _pixel_bytes(chunks.im_mode))


def _jpeg(stream: IO[bytes]) -> Header:
    with JpegImagePlugin.JpegImageFile(stream) as image:
        return Header(image.size, _pixel_bytes(image.mode))


def _gif(stream: IO[bytes]) -> Header:
    # The size includes the first frame's extent (it may grow the canvas). Its mode is P or L,
    # but Pillow reads every later frame as RGB or RGBA, and the frame count is not known yet.
    with GifImagePlugin.GifImageFile(stream) as image:
        return Header(image.size, WIDE_PIXEL_BYTES)


def _webp(stream: IO[bytes]) -> Header | None:
    # libwebp decodes to RGB(X) or RGBA.
    size = WebPImagePlugin._get_size(stream.read(_WEBP_HEADER_BYTES))
    return None if size is None else Header(size, WIDE_PIXEL_BYTES)


_READERS: Final[dict[str, Callable[[IO[bytes]], Header | None]]] = {
    "PNG": _png,
    "JPEG": _jpeg,
    "GIF": _gif,
    "WEBP": _webp,
}


def _pixel_bytes(mode: str) -> int:
    return NARROW_PIXEL_BYTES if mode in _NARROW_MODES else WIDE_PIXEL_BYTES


def read_header(stream: IO[bytes], pillow_format: str) -> Header | None:
    """Size and bytes per pixel as the header of `stream` (a file in `pillow_format`, one of
    PNG, JPEG, GIF, WEBP) states them, without allocating pixels; None when the file does not
    start with that format's signature or Pillow cannot read its header. Reads from the start of
    `stream` and leaves it anywhere."""
    try:
        stream.seek(0)
        if identify(stream.read(_SIGNATURE_BYTES)) != pillow_format:
            return None
        stream.seek(0)
        return _READERS[pillow_format](stream)
    # Hostile bytes make Pillow's readers raise anything; a warning the filters turn into an
    # error (GIF's canvas growth runs Pillow's bomb check) is one of them.
    except Exception:  # noqa: BLE001 - the caller decides what an unreadable header costs
        return None


def identify(prefix: bytes) -> str | None:
    """The format (of those read here) whose signature `prefix` starts with, by Pillow's own
    signature checks (validation still asks libmagic)."""
    for pillow_format in _READERS:
        _factory, accept = Image.OPEN[pillow_format]
        if accept is not None and accept(prefix[:_SIGNATURE_BYTES]) is True:
            return pillow_format
    return None


def decoded_bytes(source: Path, *, max_pixels: int, max_frames: int) -> int:
    """Width x height x bytes per pixel (x frames, when animations are allowed) of `source`.

    Blocking (reads the file): run it in a thread. A file the worker will refuse before decoding
    (not an image we accept, dimensions over the limits) costs 0; an accepted format whose size
    cannot be read here is charged the largest image the limits allow, never less.
    """
    with source.open("rb") as stream:
        pillow_format = identify(stream.read(_SIGNATURE_BYTES))
        if pillow_format is None:
            return 0
        header = read_header(stream, pillow_format)
    if header is None:
        cost = max_pixels * WIDE_PIXEL_BYTES
    else:
        width, height = header.size
        if width * height > max_pixels:
            return 0  # refused from the header, before any pixel is decoded
        cost = width * height * header.pixel_bytes
    if max_frames > 1 and pillow_format in _ANIMATED_FORMATS:
        cost *= max_frames  # re-encoding an animation holds every frame
    return cost
