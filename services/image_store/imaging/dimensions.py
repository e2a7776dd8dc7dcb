"""What an image will cost to decode, read from its header without decoding it.

Two users: validation (inside a worker) refuses oversized dimensions before Pillow allocates
anything, and the decode pool (in the server process, in a thread) charges each decode against
its byte budget before admitting it. Only fixed-place header fields are read here; the one
format whose size can sit anywhere (JPEG's SOF marker) is read by Pillow's marker parser, which
allocates no pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from PIL import Image

HEAD_BYTES: Final = 4096
# Pillow keeps RGB as 4 bytes a pixel (RGBX), like RGBA and CMYK; 1-byte modes are L, P and 1.
WIDE_PIXEL_BYTES: Final = 4
NARROW_PIXEL_BYTES: Final = 1
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_PNG_NARROW_COLOR_TYPES: Final = (0, 3)  # greyscale, palette
_ANIMATED_FORMATS: Final = ("image/png", "image/gif", "image/webp")


def declared_size(head: bytes, mime: str) -> tuple[int, int] | None:
    """Width and height as the header states them, for the formats that put them at a fixed
    place (JPEG's SOF can follow any number of segments; Pillow reads that one)."""
    if mime == "image/png" and len(head) >= 24 and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if mime == "image/gif" and len(head) >= 10 and head[:6] in (b"GIF87a", b"GIF89a"):
        return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    if mime == "image/webp":
        return _webp_canvas_size(head)
    return None


def _webp_canvas_size(head: bytes) -> tuple[int, int] | None:
    """Width and height from the first RIFF chunk, or None if it is not one we know."""
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    fourcc, data = head[12:16], head[20:30]
    if fourcc == b"VP8X":
        return int.from_bytes(data[4:7], "little") + 1, int.from_bytes(data[7:10], "little") + 1
    if fourcc == b"VP8L" and data[0] == 0x2F:
        bits = int.from_bytes(data[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if fourcc == b"VP8 " and data[3:6] == b"\x9d\x01\x2a":
        return int.from_bytes(data[6:8], "little") & 0x3FFF, int.from_bytes(data[8:10], "little") & 0x3FFF
    return None


def signature_mime(head: bytes) -> str | None:
    """The accepted format the magic bytes announce (validation still asks libmagic)."""
    if head.startswith(_PNG_SIGNATURE):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None


def decoded_bytes(source: Path, *, max_pixels: int, max_frames: int) -> int:
    """Width x height x bytes per pixel (x frames, when animations are allowed) of `source`.

    Blocking (reads the file): run it in a thread. A file the worker will refuse before decoding
    (not an image we accept, dimensions over the limits) costs 0; an accepted format whose size
    cannot be read here is charged the largest image the limits allow, never less.
    """
    with source.open("rb") as stream:
        head = stream.read(HEAD_BYTES)
    mime = signature_mime(head)
    if mime is None:
        return 0
    worst = max_pixels * WIDE_PIXEL_BYTES
    size, pixel_bytes = _size_and_pixel_bytes(source, head, mime)
    if size is None:
        cost = worst
    elif size[0] * size[1] > max_pixels:
        return 0  # refused from the header, before any pixel is decoded
    else:
        cost = size[0] * size[1] * pixel_bytes
    if max_frames > 1 and mime in _ANIMATED_FORMATS:
        cost *= max_frames  # re-encoding an animation holds every frame
    return cost


def _size_and_pixel_bytes(source: Path, head: bytes, mime: str) -> tuple[tuple[int, int] | None, int]:
    if mime == "image/jpeg":
        return _jpeg_size_and_pixel_bytes(source)
    if mime == "image/png" and len(head) > 25 and head[25] in _PNG_NARROW_COLOR_TYPES and head[24] <= 8:
        return declared_size(head, mime), NARROW_PIXEL_BYTES
    return declared_size(head, mime), WIDE_PIXEL_BYTES


def _jpeg_size_and_pixel_bytes(source: Path) -> tuple[tuple[int, int] | None, int]:
    try:
        with Image.open(source, formats=["JPEG"]) as image:
            narrow = image.mode in ("L", "1", "P")
            return image.size, NARROW_PIXEL_BYTES if narrow else WIDE_PIXEL_BYTES
    except Exception:  # noqa: BLE001 - any unreadable header is charged the worst case
        return None, WIDE_PIXEL_BYTES
