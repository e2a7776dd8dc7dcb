"""The `limit` and `cursor` query parameters of a list endpoint, read the same way by both services.

`limit` is ASCII digits only, at most as many as the endpoint's maximum has, and from 1 to that
maximum: `str.isdigit()` would also accept '²' and '①' (which `int()` refuses) and '٣' (which it
accepts), and the length bound refuses a 5,000-digit value before `int()` converts it. Absent
means the endpoint's default. A cursor is opaque here: absent means the first page, empty is not
one any server issued; the service that issued it decodes the rest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from common.errors import BadRequest

CURSOR_NOT_ISSUED = "cursor is not one this server issued"


@dataclass(frozen=True, slots=True)
class PageParams:
    limit: int
    cursor: str | None


def page_params(query: Mapping[str, str], *, default: int, maximum: int) -> PageParams:
    """The page a list request asks for; BadRequest (400 bad_request) for a bad limit or cursor."""
    raw_limit = query.get("limit")
    if raw_limit is None:
        limit = default
    elif re.fullmatch(rf"[0-9]{{1,{len(str(maximum))}}}", raw_limit) and 1 <= int(raw_limit) <= maximum:
        limit = int(raw_limit)
    else:
        raise BadRequest(f"limit must be a whole number from 1 to {maximum}")
    cursor = query.get("cursor")
    if cursor == "":
        raise BadRequest(CURSOR_NOT_ISSUED)
    return PageParams(limit, cursor)
