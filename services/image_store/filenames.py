"""Client-supplied file names: kept for display only, never used as a path."""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

MAX_FILENAME_LENGTH = 255


def sanitize_filename(raw: str | None) -> str | None:
    """Last path component, no control or format characters, at most 255 characters."""
    if not raw:
        return None
    name = unicodedata.normalize("NFC", raw).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip(" .")
    if not name:
        return None
    if len(name) > MAX_FILENAME_LENGTH:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            name = stem[: MAX_FILENAME_LENGTH - len(ext) - 1] + "." + ext
        else:
            name = name[:MAX_FILENAME_LENGTH]
    return name


def content_disposition(filename: str | None, fallback: str) -> str:
    """`inline` with an ASCII fallback and an RFC 5987 UTF-8 name (no header injection possible)."""
    name = filename or fallback
    ascii_name = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\;%' else "_" for ch in name)
    return f"inline; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"
