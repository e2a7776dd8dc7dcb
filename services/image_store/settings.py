"""The image-store's settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Secret, field_validator, model_validator

from common.settings.base import EnvSettings, load, setting
from common.settings.kinds import OneOf, Origins, WritableDirectory, split_csv
from common.settings.shared import CommonSettings, UploadSettings

CROSS_ORIGIN_RESOURCE_POLICIES: tuple[str, ...] = ("same-origin", "same-site", "cross-origin")
STORAGE_BACKENDS: tuple[str, ...] = ("filesystem", "s3")
SERVE_MODES: tuple[str, ...] = ("proxy", "redirect")
STORE = "image-store"

SecretKeys = Annotated[Secret[tuple[bytes, ...]], BeforeValidator(split_csv)]


@dataclass(frozen=True, slots=True)
class S3Settings:
    """Where the s3 backend keeps blobs; credentials come from botocore's standard chain, not here."""

    endpoint_url: str | None  # None = AWS itself
    bucket: str
    region: str | None
    prefix: str  # "" or ends with "/"
    operation_timeout_seconds: float  # one call as a whole: its retries and its body included


class StorageBackendSettings(EnvSettings):
    section: ClassVar[str] = "image-store: where image bytes live"
    note: ClassVar[str] = (
        "Credentials are not retina settings: botocore's standard chain reads AWS_ACCESS_KEY_ID and "
        "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with a mounted credentials file, or the workload's IAM role."
    )

    storage_backend: Annotated[str, OneOf(STORAGE_BACKENDS)] = setting(
        "IMAGE_STORAGE_BACKEND",
        "filesystem",
        doc="filesystem (IMAGE_STORAGE_PATH) or s3 (the bucket below; then IMAGE_STORAGE_PATH is only "
        "scratch space for uploads being processed). See docs/deployment.md.",
    )
    serve_mode: Annotated[str, OneOf(SERVE_MODES)] = setting(
        "IMAGE_SERVE_MODE",
        "proxy",
        doc="s3 only: proxy streams objects through the image-store; redirect answers 302 to a presigned URL.",
    )
    s3_endpoint_url: str | None = setting(
        "S3_ENDPOINT_URL", None, doc="S3-compatible endpoint (MinIO, Ceph, R2, ...); empty means AWS S3 itself."
    )
    s3_bucket: str = setting("S3_BUCKET", "", doc="Bucket (must exist). Required with IMAGE_STORAGE_BACKEND=s3.")
    s3_region: str | None = setting("S3_REGION", None, doc="The bucket's region.", shown="us-east-1")
    s3_prefix: str = setting("S3_PREFIX", "", doc="Keys go under this prefix (e.g. retina/images).")
    s3_operation_timeout_seconds: float = setting(
        "S3_OPERATION_TIMEOUT_SECONDS",
        10.0,
        ge=0.5,
        le=300.0,
        doc="Longest one S3 call may take, retries and the object's bytes included (an upload's PUT, a read "
        "of stored bytes); then the request gets 503 storage_unavailable with Retry-After. No database "
        "connection is held meanwhile.",
    )

    @field_validator("s3_prefix")
    @classmethod
    def _directory_like(cls, prefix: str) -> str:
        prefix = prefix.strip("/")
        return f"{prefix}/" if prefix else ""

    @model_validator(mode="after")
    def _backend_needs(self) -> StorageBackendSettings:
        problems = []
        if self.storage_backend == "s3" and not self.s3_bucket:
            problems.append("S3_BUCKET is required when IMAGE_STORAGE_BACKEND=s3")
        if self.serve_mode == "redirect" and self.storage_backend != "s3":
            problems.append(
                "IMAGE_SERVE_MODE=redirect needs IMAGE_STORAGE_BACKEND=s3 (a file has no URL to redirect to)"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def s3(self) -> S3Settings:
        return S3Settings(
            self.s3_endpoint_url, self.s3_bucket, self.s3_region, self.s3_prefix, self.s3_operation_timeout_seconds
        )


class BrowserSettings(EnvSettings):
    section: ClassVar[str] = "image-store: browsers"

    cors_allowed_origins: Origins = setting(
        "IMAGE_CORS_ALLOWED_ORIGINS",
        (),
        doc="Browser origins (scheme://host[:port], comma-separated) whose pages may read image bytes with "
        "fetch()/canvas (CORS on GET/HEAD of the image routes, preflight included, no credentials). "
        "Empty: no CORS headers at all. Wildcards are refused.",
    )
    explicit_resource_policy: Annotated[str | None, OneOf(CROSS_ORIGIN_RESOURCE_POLICIES)] = setting(
        "IMAGE_CROSS_ORIGIN_RESOURCE_POLICY",
        None,
        doc="Cross-Origin-Resource-Policy sent with image bytes. Default: cross-origin when "
        "IMAGE_CORS_ALLOWED_ORIGINS names an origin (so those front-ends can show images in a plain <img>), "
        "otherwise same-site (other sites cannot embed the images).",
        shown="same-site",
    )
    public_base_url: str = setting(
        "IMAGE_PUBLIC_BASE_URL",
        "",
        doc="Where browsers reach the image-store (e.g. https://images.example.com). When set, every `url` "
        "in API answers (and the upload's Location) is absolute; empty keeps them relative paths.",
    )

    @field_validator("public_base_url")
    @classmethod
    def _absolute_or_empty(cls, raw: str) -> str:
        parts = urlsplit(raw)
        if raw and (parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment):
            raise ValueError(f"must be an http:// or https:// URL with a host, got {raw!r}")
        return raw.rstrip("/")

    @property
    def cross_origin_resource_policy(self) -> str:
        """`same-site` keeps images from being embedded by other sites; a configured front-end on another
        site needs `cross-origin` to show them in a plain <img>, so that is the default once one is named."""
        if self.explicit_resource_policy is not None:
            return self.explicit_resource_policy
        return "cross-origin" if self.cors_allowed_origins else "same-site"


class ImageStoreSettings(BrowserSettings, StorageBackendSettings, UploadSettings, CommonSettings):
    section: ClassVar[str] = STORE

    host: str = setting("IMAGE_STORE_HOST", "0.0.0.0", doc="Listen address.")  # noqa: S104 - a container listens on all interfaces
    port: int = setting("IMAGE_STORE_PORT", 8081, ge=1, le=65535, doc="Listen port.")
    storage_path: WritableDirectory = setting(
        "IMAGE_STORAGE_PATH",
        Path("./uploads/images"),
        doc="Where image files live (content-addressed ab/cd/<sha256>); created at start-up, must be writable.",
        shown="./uploads/images",
    )
    retention_days: int = setting(
        "IMAGE_RETENTION_DAYS",
        30,
        ge=0,
        le=36500,
        doc="Days an image is kept before clean-up deletes it; 0 keeps images forever.",
    )
    signing_keys: SecretKeys = setting(
        "IMAGE_SIGNING_KEYS",
        doc="HMAC keys for signed image URLs, comma-separated, at least 32 characters each. The first signs; "
        "all verify (rotation).",
        required="secret for signed image URLs",
        example="CHANGE-ME-to-a-random-string-of-at-least-32-characters",
    )
    signed_url_ttl_seconds: int = setting(
        "IMAGE_SIGNED_URL_TTL_SECONDS", 3600, ge=10, le=7 * 86400, doc="Lifetime of a signed URL, in seconds."
    )
    cache_max_age_seconds: int = setting(
        "IMAGE_CACHE_MAX_AGE_SECONDS",
        86400,
        ge=0,
        le=31536000,
        doc="max-age sent with image bytes (Cache-Control: private, immutable).",
    )
    row_cache_entries: int = setting(
        "IMAGE_ROW_CACHE_ENTRIES",
        10000,
        ge=0,
        le=10_000_000,
        doc="Image rows each replica keeps in memory for serving bytes (0 = none). A delete or change anywhere "
        "is sent to every replica at once (PostgreSQL NOTIFY).",
    )
    row_cache_ttl_seconds: float = setting(
        "IMAGE_ROW_CACHE_TTL_SECONDS",
        60.0,
        ge=0.1,
        le=86400.0,
        doc="Longest a cached row is kept: only bounds staleness if a notification is ever missed, and a row "
        "never outlives expires_at.",
    )
    max_side_px: int = setting(
        "IMAGE_MAX_SIDE_PX", 10000, ge=16, le=65535, doc="Largest width or height in pixels (decompression-bomb guard)."
    )
    max_pixels: int = setting(
        "IMAGE_MAX_PIXELS",
        40_000_000,
        ge=256,
        le=500_000_000,
        doc="Largest pixel count (decompression-bomb guard).",
    )
    max_frames: int = setting(
        "IMAGE_MAX_FRAMES", 1, ge=1, le=1000, doc="Largest number of frames for animated formats."
    )
    reencode: bool = setting(
        "IMAGE_REENCODE", True, doc="Re-encode every upload (strips EXIF/GPS and trailing payloads). Leave on."
    )
    jpeg_quality: int = setting(
        "IMAGE_JPEG_QUALITY", 90, ge=50, le=100, doc="JPEG quality used when re-encoding photos."
    )
    decode_workers: int = setting("IMAGE_DECODE_WORKERS", 2, ge=1, le=64, doc="Worker processes that decode images.")
    decode_timeout_seconds: float = setting(
        "IMAGE_DECODE_TIMEOUT_SECONDS", 20.0, ge=0.5, le=600.0, doc="Longest one decode may take, in seconds."
    )
    max_pending_decodes: int = setting(
        "IMAGE_MAX_PENDING_DECODES",
        16,
        ge=1,
        le=10000,
        doc="Decodes allowed to wait for a worker before new uploads get 503.",
    )
    # Derived from the pod's memory limit: tests/deploy/test_memory_budget.py recomputes the worst case.
    decode_budget_mb: int = setting(
        "IMAGE_DECODE_BUDGET_MB",
        160,
        ge=16,
        le=65536,
        doc="MiB of decoded pixels (width x height x bytes per pixel, from the header) all decodes in flight "
        "may hold; an upload that does not fit within 2 s gets 503 busy. One image up to IMAGE_MAX_PIXELS is "
        "always admitted alone. Size it with the pod's memory limit (docs/deployment.md).",
    )
    upload_rate_per_minute: int = setting(
        "IMAGE_UPLOAD_RATE_PER_MINUTE",
        60,
        ge=0,
        le=100000,
        doc="Uploads per owner per minute (token bucket); 0 disables the limit.",
    )
    maintenance_interval_seconds: float = setting(
        "IMAGE_MAINTENANCE_INTERVAL_SECONDS",
        3600.0,
        ge=0.0,
        le=7 * 86400.0,
        doc="Seconds between background clean-up + integrity runs (one replica at a time); 0 disables it.",
    )
    orphan_grace_seconds: int = setting(
        "IMAGE_ORPHAN_GRACE_SECONDS",
        3600,
        ge=0,
        le=30 * 86400,
        doc="Files without a database row younger than this are left alone (uploads in progress).",
    )

    @field_validator("signing_keys")
    @classmethod
    def _keys_long_enough(cls, keys: SecretKeys) -> SecretKeys:
        """Comma-separated keys; the first signs, all verify (rotation without breaking live URLs)."""
        problems = [
            f": key {position} must be at least 32 characters long"
            for position, key in enumerate(keys.get_secret_value(), start=1)
            if len(key) < 32
        ]
        if not keys.get_secret_value():
            problems.append("must name at least one key")
        if problems:
            raise ValueError("\n".join(problems))
        return keys

    @property
    def decode_budget_bytes(self) -> int:
        return self.decode_budget_mb * 1024 * 1024


def load_image_store_settings(environ: Mapping[str, str]) -> ImageStoreSettings:
    return load(ImageStoreSettings, environ)
