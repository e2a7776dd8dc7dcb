"""Conditional and range requests on image bytes, decided once, from the content's SHA-256.

RFC 9110 §13.2.2 fixes the order: If-Match (strong comparison) → If-None-Match (weak
comparison) → Range, which If-Range (strong comparison) may switch off. The entity tag is the
content hash, so it is the same on every replica and never changes; no Last-Modified is sent,
so the date conditions (If-Modified-Since, If-Unmodified-Since, a date in If-Range) cannot
match anything and are ignored as §13.1.3/§13.1.4 ask.

aiohttp parses If-Match / If-None-Match into `ETag` tuples for us; it has no parser for an
entity tag in If-Range, and its Range parser cannot tell `bytes=-0` (unsatisfiable) from
`bytes=0-` (everything), so those two small grammars are matched here.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from aiohttp.helpers import ETAG_ANY, QUOTED_ETAG_RE, ETag

from common.errors import PreconditionFailed, RangeNotSatisfiable

# One byte range; digits are ASCII only (re.ASCII), so '²' or '٣' never reach int().
_BYTE_RANGE = re.compile(r"bytes=(\d*)-(\d*)", re.ASCII | re.IGNORECASE)
# Positions longer than this are beyond any file (and int() refuses > 4300 digits anyway).
_MAX_DIGITS = 18
_BEYOND_ANY_FILE = 10**_MAX_DIGITS


class Precondition(enum.Enum):
    SEND = "send"
    NOT_MODIFIED = "not_modified"


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes [start, start + length) of a file of `total` bytes."""

    start: int
    length: int
    total: int

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.start + self.length - 1}/{self.total}"


def _matches(tags: tuple[ETag, ...], etag: str, *, weak_allowed: bool) -> bool:
    return any(tag.value in (etag, ETAG_ANY) and (weak_allowed or not tag.is_weak) for tag in tags)


def evaluate_preconditions(
    if_match: tuple[ETag, ...] | None, if_none_match: tuple[ETag, ...] | None, etag: str
) -> Precondition:
    """Raise PreconditionFailed (412) or say whether to send the bytes or a 304.

    `etag` is the bare tag value (the SHA-256). A header aiohttp could not parse arrives as an
    empty tuple: it lists no tag, so If-Match fails and If-None-Match passes.
    """
    if if_match is not None and not _matches(if_match, etag, weak_allowed=False):
        raise PreconditionFailed("the image does not match If-Match")
    if if_none_match is not None and _matches(if_none_match, etag, weak_allowed=True):
        return Precondition.NOT_MODIFIED
    return Precondition.SEND


def _if_range_holds(if_range: str | None, etag: str) -> bool:
    if if_range is None:
        return True
    match = QUOTED_ETAG_RE.fullmatch(if_range.strip())
    # A weak tag or a date never matches: If-Range needs a strong validator we issued.
    return match is not None and not match.group(1) and match.group(2) == etag


def _position(digits: str) -> int | None:
    if not digits:
        return None
    return _BEYOND_ANY_FILE if len(digits.lstrip("0")) > _MAX_DIGITS else int(digits)


def select_range(range_header: str | None, if_range: str | None, etag: str, size: int) -> ByteRange | None:
    """The one range to send (206), or None for the whole file (200).

    Raises RangeNotSatisfiable (416) for a byte range that selects nothing, such as a start at
    or beyond the end, `bytes=-0`, or an end before its start. Other range units and several
    ranges at once are ignored (RFC 9110 §14.2 allows it; we do not build multipart/byteranges).
    """
    if range_header is None or not _if_range_holds(if_range, etag):
        return None
    spec = range_header.strip()
    if "," in spec or not spec[:6].lower().startswith("bytes="):
        return None
    match = _BYTE_RANGE.fullmatch(spec)
    first, last = (_position(match.group(1)), _position(match.group(2))) if match else (None, None)
    if first is None and last is None:
        raise RangeNotSatisfiable(size)
    if first is None:  # a suffix: the last `last` bytes; `bytes=-0` asks for none of them
        if not last:
            raise RangeNotSatisfiable(size)
        length = min(last, size)
        return ByteRange(size - length, length, size)
    if first >= size or (last is not None and last < first):
        raise RangeNotSatisfiable(size)
    end = size - 1 if last is None else min(last, size - 1)
    return ByteRange(first, end - first + 1, size)
