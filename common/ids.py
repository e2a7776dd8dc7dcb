"""IDs in URLs and bodies: canonical hyphenated UUIDs only (braces, URNs and bare hex are refused)."""

from __future__ import annotations

import re
import uuid
from typing import Any

# Used with fullmatch: `$` would also match before a final "\n", which uuid.UUID() then refuses.
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def parse_uuid(raw: Any) -> uuid.UUID | None:
    """The UUID `raw` spells, or None when it is not a canonical UUID string."""
    if not isinstance(raw, str) or not _CANONICAL_UUID.fullmatch(raw):
        return None
    return uuid.UUID(raw)
