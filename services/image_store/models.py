"""Records the image-store returns: what a row means to a caller."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class ImageRow:
    id: uuid.UUID
    owner_id: str
    sha256: str
    mime_type: str
    size_bytes: int
    width: int
    height: int
    storage_key: str
    original_filename: str | None
    message_id: uuid.UUID | None
    created_at: datetime
    expires_at: datetime | None

    def to_json(self, url: str) -> dict[str, Any]:
        """The contract's ImageRecord."""
        return {
            "id": str(self.id),
            "owner_id": self.owner_id,
            "sha256": self.sha256,
            "mime_type": self.mime_type,
            "size_bytes": self.size_bytes,
            "width": self.width,
            "height": self.height,
            "original_filename": self.original_filename,
            "message_id": str(self.message_id) if self.message_id else None,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "url": url,
        }


@dataclass(frozen=True, slots=True)
class BlobInfo:
    sha256: str
    size_bytes: int
    mime_type: str
    width: int
    height: int
    storage_key: str


@dataclass(frozen=True, slots=True)
class BlobState:
    """What an upload must know of a blob to record a row for it (see uploads.py)."""

    recorded: bool  # an image_blobs row exists
    deletion_id: int | None  # the newest deletion of its object on record (None: none)
    deleting: bool  # that deletion's DELETE may still land


@dataclass(frozen=True, slots=True)
class StorageStats:
    images: int
    blobs: int
    bytes: int
    by_mime_type: dict[str, dict[str, int]]
    oldest_created_at: datetime | None
    expired_pending: int

    def to_json(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "blobs": self.blobs,
            "bytes": self.bytes,
            "by_mime_type": self.by_mime_type,
            "oldest_created_at": self.oldest_created_at.isoformat() if self.oldest_created_at else None,
            "expired_pending": self.expired_pending,
        }
