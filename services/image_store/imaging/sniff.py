"""What an upload really is, from its bytes: libmagic's MIME type, and whether a WebP is lossless.

The client's claims (Content-Type, file name) are never used; Pillow may later open only the
format found here.
"""

from __future__ import annotations

import io
from typing import IO, Any, Final

from common.errors import EmptyUpload, UnsupportedMediaType
from services.image_store.imaging.decode import PILLOW_FORMATS

# Names some libmagic versions use for the same formats.
_MIME_ALIASES: Final[dict[str, str]] = {
    "image/apng": "image/png",
    "image/x-png": "image/png",
    "image/pjpeg": "image/jpeg",
    "image/jpg": "image/jpeg",
    "image/x-webp": "image/webp",
}
SNIFF_BYTES: Final = 4096

_magic: Any = None


def sniffer() -> Any:
    """libmagic handle, created lazily once per worker process (it loads a database)."""
    global _magic
    if _magic is None:
        import magic

        _magic = magic.Magic(mime=True)
    return _magic


def sniff_mime(head: bytes) -> str:
    """The MIME type libmagic sees in the first bytes (the client's claims are never used)."""
    detected = str(sniffer().from_buffer(head))
    return _MIME_ALIASES.get(detected, detected)


def accepted_mime(head: bytes, allowed_types: frozenset[str]) -> str:
    """The sniffed type if this server accepts it; otherwise the contract's 415 (or 400 when empty)."""
    if not head:
        raise EmptyUpload("the upload is empty")
    mime = sniff_mime(head)
    if mime not in allowed_types or mime not in PILLOW_FORMATS:
        allowed = ", ".join(sorted(allowed_types & PILLOW_FORMATS.keys()))
        raise UnsupportedMediaType(f"the file is {mime}, which is not accepted; allowed types: {allowed}")
    return mime


def is_lossless(mime: str, stream: IO[bytes]) -> bool:
    """Whether re-encoding must stay lossless: everything but JPEG and lossy WebP."""
    return mime != "image/jpeg" and (mime != "image/webp" or _webp_is_lossless(stream))


def _webp_is_lossless(stream: IO[bytes]) -> bool:
    """Whether the first image bitstream is VP8L; Pillow does not report it and re-encoding a
    lossless WebP lossily would lose what the uploader chose."""
    stream.seek(12)
    for _ in range(64):
        header = stream.read(8)
        if len(header) < 8:
            return False
        fourcc, size = header[:4], int.from_bytes(header[4:], "little")
        if fourcc == b"VP8L":
            return True
        if fourcc in (b"VP8 ", b"ALPH"):
            return False
        if fourcc == b"ANMF":
            stream.seek(16, io.SEEK_CUR)  # the frame header; the frame's own chunks follow
            continue
        stream.seek(size + (size & 1), io.SEEK_CUR)
    return False
