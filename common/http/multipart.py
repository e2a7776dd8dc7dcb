"""Reading the small text fields of a multipart form, shared by both services' upload handlers."""

from __future__ import annotations

from aiohttp import BodyPartReader

from common.errors import BadRequest


async def read_small_field(part: BodyPartReader, limit: int) -> str:
    """A form field's UTF-8 text, refused (400) as soon as more than `limit` bytes have arrived.

    Read in `limit`-sized chunks so a hostile field costs at most about twice `limit` in memory,
    whatever the client claims or sends.
    """
    data = bytearray()
    while chunk := await part.read_chunk(limit):
        data += chunk
        if len(data) > limit:
            raise BadRequest(f"field {part.name!r} is longer than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"field {part.name!r} is not UTF-8 text") from exc
