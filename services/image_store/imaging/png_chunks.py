"""Every PNG chunk's CRC, checked in one streaming pass before Pillow decodes the file.

Pillow checks the CRC of IHDR and of the other chunks before the pixel data while it opens a PNG
(and then reports a damaged one only as an unreadable header), but it reads IDAT and fdAT (the
pixel data) and every chunk after them without checking theirs, and has no setting that would:
a PNG whose pixel data was damaged in transit can still inflate and decode, and was stored. So
each chunk's CRC (zlib's CRC-32 over its type and data, PNG spec 5.3) is computed here, a block
at a time: memory stays at one block whatever the file's size. The check stops at IEND (anything
after it is dropped by re-encoding); a file that ends cleanly between two chunks without IEND is
left to Pillow, as before.
"""

from __future__ import annotations

import zlib
from typing import IO, Final

from common.errors import InvalidImage

PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
READ_BLOCK_BYTES: Final = 64 * 1024
MAX_CHUNK_LENGTH: Final = 2**31 - 1  # PNG spec 5.3: a chunk's length is at most 2^31 - 1
_INVALID: Final = "the file is not a valid PNG image"


def check_png_chunks(stream: IO[bytes]) -> None:
    """Raise InvalidImage for a chunk whose CRC is wrong (or whose type or length cannot be a
    chunk's), EOFError when the file ends inside a chunk. Reads from the start of `stream` and
    leaves it anywhere."""
    stream.seek(0)
    if stream.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
        raise InvalidImage(f"{_INVALID}: its signature is wrong")
    while True:
        header = stream.read(8)
        if not header:
            return
        if len(header) < 8:
            raise EOFError("the file ends inside a chunk header")
        length, kind = int.from_bytes(header[:4], "big"), header[4:]
        if length > MAX_CHUNK_LENGTH or not kind.isalpha():  # bytes.isalpha: ASCII letters only
            raise InvalidImage(f"{_INVALID}: its data is corrupt (a chunk has an impossible type or length)")
        crc = zlib.crc32(kind)
        remaining = length
        while remaining:
            block = stream.read(min(READ_BLOCK_BYTES, remaining))
            if not block:
                raise EOFError("the file ends inside a chunk")
            crc = zlib.crc32(block, crc)
            remaining -= len(block)
        stored = stream.read(4)
        if len(stored) < 4:
            raise EOFError("the file ends inside a chunk's CRC")
        if int.from_bytes(stored, "big") != crc:
            name = kind.decode("ascii")
            raise InvalidImage(f"{_INVALID}: its data is corrupt (the CRC checksum of its {name} chunk does not match)")
        if kind == b"IEND":
            return
