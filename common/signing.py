"""HMAC-signed, expiring URLs for images, so browsers can fetch bytes without a service token.

The signature binds the image ID and the expiry time; keys rotate by listing the new key first
(it signs) and keeping the old one after it (it still verifies) until old URLs have expired.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

# Explicit ASCII classes: \d would also match the digits of every other script.
_EXPIRES = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]{1,128}")


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
        """False for anything but an unexpired signature we made; never raises on hostile input.

        Both values come straight from a URL: only ASCII digits and base64url characters are let
        through (str.isdigit() would accept '²', which int() refuses, and compare_digest()
        refuses non-ASCII text), and the comparison is done on bytes.
        """
        if not _EXPIRES.fullmatch(expires) or not _SIGNATURE.fullmatch(signature):
            return False
        expires_at = int(expires)
        if expires_at < (time.time() if now is None else now):
            return False
        presented = signature.encode("ascii")
        return any(hmac.compare_digest(self._mac(key, subject, expires_at).encode(), presented) for key in self._keys)
