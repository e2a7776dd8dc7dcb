"""Image rows this replica has looked up recently, for serving bytes without a query.

It holds rows, never access decisions: the handler still checks the caller's owner or
signature against the row on every request. Correctness rests on three rules:
- every change to `images` (UPDATE, DELETE, TRUNCATE) sends a NOTIFY from a trigger, in the
  changing transaction (migrations/0005), and each replica's listener drops the row at once;
- while the listener is not connected nothing is read from or added to the cache (and it is
  emptied on every connect and disconnect), so a missed notification cannot leave a stale row;
- a lookup that raced with an invalidation does not store its (possibly older) answer: the
  generation counter moves on every invalidation.
An entry lives at most IMAGE_ROW_CACHE_TTL_SECONDS and never past the row's expires_at.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import structlog
from cachetools import TLRUCache

from services.image_store.models import ImageRow

log = structlog.get_logger("retina.image_store.row_cache")

IMAGE_CHANGE_CHANNEL = "retina_image_changed"
ALL_IMAGES = "*"  # payload of the TRUNCATE trigger


class ImageRowCache:
    def __init__(self, max_entries: int, ttl_seconds: float) -> None:
        self._ttl = ttl_seconds
        self._rows: TLRUCache[uuid.UUID, ImageRow] | None = (
            TLRUCache(maxsize=max_entries, ttu=self._expiry_time, timer=time.monotonic) if max_entries > 0 else None
        )
        self._generation = 0
        self._listening = False

    def _expiry_time(self, _key: uuid.UUID, row: ImageRow, now: float) -> float:
        """Monotonic deadline: the TTL, or sooner when the row itself expires."""
        lifetime = self._ttl
        if row.expires_at is not None:
            lifetime = min(lifetime, (row.expires_at - datetime.now(UTC)).total_seconds())
        return now + lifetime

    @property
    def active(self) -> bool:
        return self._rows is not None and self._listening

    @property
    def generation(self) -> int:
        """Take before a lookup; `put` ignores the answer if an invalidation came in between."""
        return self._generation

    def __len__(self) -> int:
        return 0 if self._rows is None else len(self._rows)

    def get(self, image_id: uuid.UUID) -> ImageRow | None:
        if not self.active:
            return None
        row = self._rows.get(image_id)  # type: ignore[union-attr]
        if row is not None and row.expires_at is not None and row.expires_at <= datetime.now(UTC):
            self._rows.pop(image_id, None)  # type: ignore[union-attr]
            return None
        return row

    def put(self, row: ImageRow, generation: int) -> None:
        if not self.active or generation != self._generation:
            return
        if row.expires_at is not None and row.expires_at <= datetime.now(UTC):
            return
        self._rows[row.id] = row  # type: ignore[index]

    def invalidate(self, image_id: uuid.UUID | None) -> None:
        """Drop one row (None: all of them)."""
        self._generation += 1
        if self._rows is None:
            return
        if image_id is None:
            self._rows.clear()
        else:
            self._rows.pop(image_id, None)

    def set_listening(self, listening: bool) -> None:
        """Listener state: whatever was cached may have missed notifications either way."""
        self._listening = listening
        self.invalidate(None)

    def on_notify(self, _conn: object, _pid: int, _channel: str, raw_payload: object) -> None:
        payload = str(raw_payload)  # asyncpg delivers NOTIFY payloads as str, typed as object
        if payload == ALL_IMAGES:
            self.invalidate(None)
            return
        try:
            self.invalidate(uuid.UUID(payload))
        except ValueError:
            log.warning("bad_image_change_notification", payload=payload[:64])
            self.invalidate(None)
