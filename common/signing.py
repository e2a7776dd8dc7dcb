"""HMAC-signed, expiring URLs for images, so browsers can fetch bytes without a service token.

The signature binds the image ID and the expiry time; keys rotate by listing the new key first
(it signs) and keeping the old one after it (it still verifies) until old URLs have expired.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


class UrlSigner:
    def __init__(self, keys: tuple[bytes, ...], ttl_seconds: int) -> None:
        if not keys:
            raise ValueError("at least one signing key is required")
        self._keys = keys
        self.ttl_seconds = ttl_seconds

    @staticmethod
    def _mac(key: bytes, subject: str, expires: int) -> str:
        digest = hmac.new(key, f"{subject}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def sign(self, subject: str, *, now: float | None = None) -> tuple[int, str]:
        """Return (expires, signature) for `subject` (an image ID)."""
        expires = int((time.time() if now is None else now) + self.ttl_seconds)
        return expires, self._mac(self._keys[0], subject, expires)

    def verify(self, subject: str, expires: str, signature: str, *, now: float | None = None) -> bool:
        if not expires.isdigit() or len(expires) > 12 or not signature or len(signature) > 128:
            return False
        expires_at = int(expires)
        if expires_at < (time.time() if now is None else now):
            return False
        return any(hmac.compare_digest(self._mac(key, subject, expires_at), signature) for key in self._keys)
