"""Typed settings for both services, read from the environment and validated at start-up.

Every variable here is listed with its default and meaning in `.env.example`; a test keeps the
two in step.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from common.env import EnvReader

# Formats the image-store knows how to validate and re-encode. SVG is deliberately absent: it is
# a document that can carry script, not a raster image.
SUPPORTED_IMAGE_TYPES: tuple[str, ...] = ("image/png", "image/jpeg", "image/webp", "image/gif")
DEFAULT_IMAGE_TYPES: tuple[str, ...] = ("image/png", "image/jpeg", "image/webp")

FALLBACK_POLICIES: tuple[str, ...] = ("reject", "fallback_model", "text_only")
CROSS_ORIGIN_RESOURCE_POLICIES: tuple[str, ...] = ("same-origin", "same-site", "cross-origin")

# The original plan's defaults.
DEFAULT_STORAGE_PATH = "./uploads/images"
DEFAULT_MAX_SIZE_MB = 10
STORAGE_BACKENDS: tuple[str, ...] = ("filesystem", "s3")
SERVE_MODES: tuple[str, ...] = ("proxy", "redirect")


@dataclass(frozen=True, slots=True)
class CommonSettings:
    database_url: str
    service_tokens: tuple[str, ...]
    log_level: str
    log_format: str
    shutdown_timeout_seconds: float
    db_pool_min_size: int
    db_pool_max_size: int
    migrations_path: Path


@dataclass(frozen=True, slots=True)
class ImageStoreSettings:
    common: CommonSettings
    host: str
    port: int
    upload_enabled: bool
    storage_path: Path
    max_size_bytes: int
    retention_days: int
    allowed_types: frozenset[str]
    serve_endpoint: str
    signing_keys: tuple[bytes, ...]
    signed_url_ttl_seconds: int
    cache_max_age_seconds: int
    row_cache_entries: int
    row_cache_ttl_seconds: float
    max_side_px: int
    max_pixels: int
    max_frames: int
    reencode: bool
    jpeg_quality: int
    decode_workers: int
    decode_timeout_seconds: float
    max_pending_decodes: int
    decode_budget_bytes: int
    upload_rate_per_minute: int
    maintenance_interval_seconds: float
    orphan_grace_seconds: int
    upload_idle_timeout_seconds: float
    upload_deadline_seconds: float
    storage_backend: str
    serve_mode: str
    s3: S3Settings
    cors_allowed_origins: tuple[str, ...] = ()
    cross_origin_resource_policy: str = "same-site"
    public_base_url: str = ""


@dataclass(frozen=True, slots=True)
class S3Settings:
    """Where the s3 backend keeps blobs; credentials come from botocore's standard chain, not here."""

    endpoint_url: str | None  # None = AWS itself
    bucket: str
    region: str | None
    prefix: str  # "" or ends with "/"


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    common: CommonSettings
    host: str
    port: int
    ollama_url: str
    image_store_url: str
    image_store_token: str
    upload_enabled: bool
    model_detection_enabled: bool
    fallback_policy: str
    fallback_model: str
    capability_ttl_seconds: float
    max_image_edge: int
    max_images_per_message: int
    max_images_per_request: int
    history_messages: int
    history_images: int
    image_cache_entries: int
    image_cache_bytes: int
    encode_workers: int
    prep_budget_bytes: int
    max_streams_per_user: int
    stream_rate_per_minute: int
    ollama_connect_timeout_seconds: float
    ollama_read_timeout_seconds: float
    upstream_retries: int
    heartbeat_seconds: float
    known_models: tuple[str, ...]
    max_upload_bytes: int
    image_serve_endpoint: str
    stream_sweep_after_seconds: float
    stream_save_retry_seconds: float
    upload_idle_timeout_seconds: float
    upload_deadline_seconds: float
    cors_allowed_origins: tuple[str, ...] = ()
    demo_page_enabled: bool = False


def _default_migrations_path() -> Path:
    return Path(__file__).resolve().parent.parent / "migrations"


def read_migrations_path(env: EnvReader) -> Path:
    migrations = Path(env.string("MIGRATIONS_PATH", str(_default_migrations_path())))
    if not migrations.is_dir():
        env.problem(f"MIGRATIONS_PATH ({migrations}) is not a directory")
    return migrations


def read_common(env: EnvReader) -> CommonSettings:
    tokens = env.csv("SERVICE_TOKENS", ())
    if not tokens:
        env.problem("SERVICE_TOKENS is required (comma-separated bearer tokens) but is not set")
    elif any(len(token) < 16 for token in tokens):
        env.problem("SERVICE_TOKENS: every token must be at least 16 characters long")
    pool_min = env.integer("DB_POOL_MIN_SIZE", 1, minimum=0, maximum=100)
    pool_max = env.integer("DB_POOL_MAX_SIZE", 5, minimum=1, maximum=100)
    if pool_min > pool_max:
        env.problem(f"DB_POOL_MIN_SIZE ({pool_min}) must not exceed DB_POOL_MAX_SIZE ({pool_max})")
    migrations = read_migrations_path(env)
    return CommonSettings(
        database_url=env.database_url("DATABASE_URL"),
        service_tokens=tokens,
        log_level=env.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
        log_format=env.choice("LOG_FORMAT", "json", ("json", "console")),
        shutdown_timeout_seconds=env.number("SHUTDOWN_TIMEOUT_SECONDS", 20.0, minimum=0.0, maximum=600.0),
        db_pool_min_size=pool_min,
        db_pool_max_size=pool_max,
        migrations_path=migrations,
    )


def _read_allowed_types(env: EnvReader) -> frozenset[str]:
    types = tuple(t.lower() for t in env.csv("IMAGE_ALLOWED_TYPES", DEFAULT_IMAGE_TYPES))
    for mime in types:
        if mime == "image/svg+xml":
            env.problem("IMAGE_ALLOWED_TYPES: image/svg+xml is never allowed (SVG can carry script)")
        elif mime not in SUPPORTED_IMAGE_TYPES:
            env.problem(f"IMAGE_ALLOWED_TYPES: unknown type {mime!r}; supported: " + ", ".join(SUPPORTED_IMAGE_TYPES))
    if not types:
        env.problem("IMAGE_ALLOWED_TYPES must name at least one type")
    return frozenset(types)


def _read_signing_keys(env: EnvReader) -> tuple[bytes, ...]:
    """Comma-separated keys; the first signs, all verify (rotation without breaking live URLs)."""
    raw_keys = env.csv("IMAGE_SIGNING_KEYS", ())
    if not raw_keys:
        env.problem("IMAGE_SIGNING_KEYS is required (secret for signed image URLs) but is not set")
    keys: list[bytes] = []
    for position, raw in enumerate(raw_keys, start=1):
        key = raw.encode()
        if len(key) < 32:
            env.problem(f"IMAGE_SIGNING_KEYS: key {position} must be at least 32 characters long")
        keys.append(key)
    return tuple(keys)


def _read_serve_endpoint(env: EnvReader) -> str:
    endpoint = env.string("IMAGE_SERVE_ENDPOINT", "/api/images").rstrip("/")
    if not endpoint.startswith("/") or "{" in endpoint or " " in endpoint:
        env.problem(f"IMAGE_SERVE_ENDPOINT must be a path starting with '/', got {endpoint!r}")
        return "/api/images"
    return endpoint


def read_cors_origins(env: EnvReader, name: str) -> tuple[str, ...]:
    """Exact origins (scheme://host[:port]) a browser page may read responses from; empty = no CORS.

    Wildcards are refused on purpose: an allow-list is the point, and a typo must fail at start-up
    rather than silently open (or close) the service to every page on the web.
    """
    origins: list[str] = []
    for raw in env.csv(name, ()):
        candidate = raw.rstrip("/")
        parts = urlsplit(candidate)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
            or parts.username
        ):
            env.problem(f"{name}: {raw!r} is not an origin like https://chat.example.com or http://127.0.0.1:5173")
            continue
        origins.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return tuple(dict.fromkeys(origins))


def _read_public_base_url(env: EnvReader) -> str:
    """Where browsers reach the image-store; empty keeps `url` fields relative (today's answers)."""
    raw = env.string("IMAGE_PUBLIC_BASE_URL", "")
    if not raw:
        return ""
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        env.problem(f"IMAGE_PUBLIC_BASE_URL must be an http:// or https:// URL with a host, got {raw!r}")
        return ""
    return raw.rstrip("/")


def _read_resource_policy(env: EnvReader, cors_origins: tuple[str, ...]) -> str:
    """`same-site` protects images from embedding by other sites; a configured front-end origin on
    another site needs `cross-origin` to show them in a plain <img>, so that becomes the default
    as soon as IMAGE_CORS_ALLOWED_ORIGINS names one."""
    default = "cross-origin" if cors_origins else "same-site"
    return env.choice("IMAGE_CROSS_ORIGIN_RESOURCE_POLICY", default, CROSS_ORIGIN_RESOURCE_POLICIES)


def read_upload_timeouts(env: EnvReader) -> tuple[float, float]:
    """(idle, deadline) for reading an upload's body; both services read them (the gateway's
    timeouts towards the store are derived from them, so they must agree)."""
    idle = env.number("IMAGE_UPLOAD_IDLE_TIMEOUT_SECONDS", 30.0, minimum=0.1, maximum=3600.0)
    deadline = env.number("IMAGE_UPLOAD_DEADLINE_SECONDS", 300.0, minimum=0.5, maximum=86400.0)
    if idle > deadline:
        env.problem(
            f"IMAGE_UPLOAD_IDLE_TIMEOUT_SECONDS ({idle:g}) must not exceed IMAGE_UPLOAD_DEADLINE_SECONDS ({deadline:g})"
        )
    return idle, deadline


def load_image_store_settings(environ: Mapping[str, str]) -> ImageStoreSettings:
    env = EnvReader(environ)
    settings = read_image_store(env)
    env.raise_if_problems()
    return settings


def read_image_store(env: EnvReader) -> ImageStoreSettings:
    cors_origins = read_cors_origins(env, "IMAGE_CORS_ALLOWED_ORIGINS")
    upload_idle, upload_deadline = read_upload_timeouts(env)
    backend, serve_mode, s3 = _read_storage_backend(env)
    return ImageStoreSettings(
        common=read_common(env),
        host=env.string("IMAGE_STORE_HOST", "0.0.0.0"),  # noqa: S104 - a container listens on all interfaces
        port=env.integer("IMAGE_STORE_PORT", 8081, minimum=1, maximum=65535),
        upload_enabled=env.boolean("IMAGE_UPLOAD_ENABLED", True),
        storage_path=env.writable_directory("IMAGE_STORAGE_PATH", DEFAULT_STORAGE_PATH),
        max_size_bytes=env.integer("IMAGE_MAX_SIZE_MB", DEFAULT_MAX_SIZE_MB, minimum=1, maximum=1024) * 1024 * 1024,
        retention_days=env.integer("IMAGE_RETENTION_DAYS", 30, minimum=0, maximum=36500),
        allowed_types=_read_allowed_types(env),
        serve_endpoint=_read_serve_endpoint(env),
        signing_keys=_read_signing_keys(env),
        signed_url_ttl_seconds=env.integer("IMAGE_SIGNED_URL_TTL_SECONDS", 3600, minimum=10, maximum=7 * 86400),
        cache_max_age_seconds=env.integer("IMAGE_CACHE_MAX_AGE_SECONDS", 86400, minimum=0, maximum=31536000),
        row_cache_entries=env.integer("IMAGE_ROW_CACHE_ENTRIES", 10000, minimum=0, maximum=10_000_000),
        row_cache_ttl_seconds=env.number("IMAGE_ROW_CACHE_TTL_SECONDS", 60.0, minimum=0.1, maximum=86400.0),
        max_side_px=env.integer("IMAGE_MAX_SIDE_PX", 10000, minimum=16, maximum=65535),
        max_pixels=env.integer("IMAGE_MAX_PIXELS", 40_000_000, minimum=256, maximum=500_000_000),
        max_frames=env.integer("IMAGE_MAX_FRAMES", 1, minimum=1, maximum=1000),
        reencode=env.boolean("IMAGE_REENCODE", True),
        jpeg_quality=env.integer("IMAGE_JPEG_QUALITY", 90, minimum=50, maximum=100),
        decode_workers=env.integer("IMAGE_DECODE_WORKERS", 2, minimum=1, maximum=64),
        decode_timeout_seconds=env.number("IMAGE_DECODE_TIMEOUT_SECONDS", 20.0, minimum=0.5, maximum=600.0),
        max_pending_decodes=env.integer("IMAGE_MAX_PENDING_DECODES", 16, minimum=1, maximum=10000),
        # Derived from the pod's 1 Gi limit: tests/deploy/test_memory_budget.py recomputes the worst case.
        decode_budget_bytes=env.integer("IMAGE_DECODE_BUDGET_MB", 160, minimum=16, maximum=65536) * 1024 * 1024,
        upload_rate_per_minute=env.integer("IMAGE_UPLOAD_RATE_PER_MINUTE", 60, minimum=0, maximum=100000),
        maintenance_interval_seconds=env.number(
            "IMAGE_MAINTENANCE_INTERVAL_SECONDS", 3600.0, minimum=0.0, maximum=7 * 86400.0
        ),
        orphan_grace_seconds=env.integer("IMAGE_ORPHAN_GRACE_SECONDS", 3600, minimum=0, maximum=30 * 86400),
        cors_allowed_origins=cors_origins,
        cross_origin_resource_policy=_read_resource_policy(env, cors_origins),
        public_base_url=_read_public_base_url(env),
        upload_idle_timeout_seconds=upload_idle,
        upload_deadline_seconds=upload_deadline,
        storage_backend=backend,
        serve_mode=serve_mode,
        s3=s3,
    )


def _read_storage_backend(env: EnvReader) -> tuple[str, str, S3Settings]:
    """IMAGE_STORAGE_BACKEND, IMAGE_SERVE_MODE and the S3_* location, checked together."""
    backend = env.choice("IMAGE_STORAGE_BACKEND", "filesystem", STORAGE_BACKENDS)
    serve_mode = env.choice("IMAGE_SERVE_MODE", "proxy", SERVE_MODES)
    s3 = read_s3(env, required=backend == "s3")
    if serve_mode == "redirect" and backend != "s3":
        env.problem("IMAGE_SERVE_MODE=redirect needs IMAGE_STORAGE_BACKEND=s3 (a file has no URL to redirect to)")
    return backend, serve_mode, s3


def read_s3(env: EnvReader, *, required: bool) -> S3Settings:
    bucket = env.string("S3_BUCKET", "")
    if required and not bucket:
        env.problem("S3_BUCKET is required when IMAGE_STORAGE_BACKEND=s3")
    prefix = env.string("S3_PREFIX", "").strip("/")
    return S3Settings(
        endpoint_url=env.string("S3_ENDPOINT_URL", "") or None,
        bucket=bucket,
        region=env.string("S3_REGION", "") or None,
        prefix=f"{prefix}/" if prefix else "",
    )


def load_gateway_settings(environ: Mapping[str, str]) -> GatewaySettings:
    env = EnvReader(environ)
    settings = read_gateway(env)
    env.raise_if_problems()
    return settings


def read_gateway(env: EnvReader) -> GatewaySettings:
    common = read_common(env)
    token = env.string("IMAGE_STORE_TOKEN", common.service_tokens[0] if common.service_tokens else "")
    policy = env.choice("VISION_FALLBACK_POLICY", "reject", FALLBACK_POLICIES)
    fallback_model = env.string("VISION_FALLBACK_MODEL", "")
    if policy == "fallback_model" and not fallback_model:
        env.problem("VISION_FALLBACK_MODEL is required when VISION_FALLBACK_POLICY=fallback_model")
    per_message = env.integer("VISION_MAX_IMAGES_PER_MESSAGE", 4, minimum=1, maximum=64)
    per_request = env.integer("VISION_MAX_IMAGES_PER_REQUEST", 8, minimum=1, maximum=256)
    if per_request < per_message:
        env.problem(
            f"VISION_MAX_IMAGES_PER_REQUEST ({per_request}) must be at least "
            f"VISION_MAX_IMAGES_PER_MESSAGE ({per_message})"
        )
    upload_idle, upload_deadline = read_upload_timeouts(env)
    settings = GatewaySettings(
        common=common,
        host=env.string("VISION_GATEWAY_HOST", "0.0.0.0"),  # noqa: S104 - a container listens on all interfaces
        port=env.integer("VISION_GATEWAY_PORT", 8082, minimum=1, maximum=65535),
        ollama_url=env.http_url("OLLAMA_URL", "http://127.0.0.1:11434"),
        image_store_url=env.http_url("IMAGE_STORE_URL", "http://127.0.0.1:8081"),
        image_store_token=token,
        upload_enabled=env.boolean("IMAGE_UPLOAD_ENABLED", True),
        model_detection_enabled=env.boolean("VISION_MODEL_DETECTION_ENABLED", True),
        fallback_policy=policy,
        fallback_model=fallback_model,
        capability_ttl_seconds=env.number("VISION_CAPABILITY_TTL_SECONDS", 300.0, minimum=0.0, maximum=86400.0),
        max_image_edge=env.integer("VISION_MAX_IMAGE_EDGE", 1024, minimum=64, maximum=8192),
        max_images_per_message=per_message,
        max_images_per_request=per_request,
        history_messages=env.integer("VISION_HISTORY_MESSAGES", 20, minimum=0, maximum=1000),
        history_images=env.integer("VISION_HISTORY_IMAGES", 4, minimum=0, maximum=256),
        image_cache_entries=env.integer("VISION_IMAGE_CACHE_ENTRIES", 256, minimum=0, maximum=100000),
        image_cache_bytes=env.integer("VISION_IMAGE_CACHE_MB", 32, minimum=1, maximum=65536) * 1024 * 1024,
        encode_workers=env.integer("VISION_ENCODE_WORKERS", 2, minimum=1, maximum=64),
        prep_budget_bytes=env.integer("VISION_PREP_BUDGET_MB", 160, minimum=16, maximum=65536) * 1024 * 1024,
        max_streams_per_user=env.integer("VISION_MAX_STREAMS_PER_USER", 4, minimum=0, maximum=100000),
        stream_rate_per_minute=env.integer("VISION_STREAM_RATE_PER_MINUTE", 30, minimum=0, maximum=1000000),
        ollama_connect_timeout_seconds=env.number("OLLAMA_CONNECT_TIMEOUT_SECONDS", 5.0, minimum=0.1, maximum=120.0),
        ollama_read_timeout_seconds=env.number("OLLAMA_READ_TIMEOUT_SECONDS", 300.0, minimum=1.0, maximum=3600.0),
        upstream_retries=env.integer("UPSTREAM_RETRIES", 2, minimum=0, maximum=10),
        heartbeat_seconds=env.number("SSE_HEARTBEAT_SECONDS", 15.0, minimum=0.1, maximum=300.0),
        known_models=env.csv("VISION_KNOWN_MODELS", ()),
        max_upload_bytes=env.integer("IMAGE_MAX_SIZE_MB", DEFAULT_MAX_SIZE_MB, minimum=1, maximum=1024) * 1024 * 1024,
        image_serve_endpoint=_read_serve_endpoint(env),
        stream_sweep_after_seconds=env.number("STREAM_SWEEP_AFTER_SECONDS", 60.0, minimum=1.0, maximum=86400.0),
        stream_save_retry_seconds=env.number("STREAM_SAVE_RETRY_SECONDS", 15.0, minimum=0.0, maximum=600.0),
        cors_allowed_origins=read_cors_origins(env, "GATEWAY_CORS_ALLOWED_ORIGINS"),
        demo_page_enabled=env.boolean("DEMO_PAGE_ENABLED", False),
        upload_idle_timeout_seconds=upload_idle,
        upload_deadline_seconds=upload_deadline,
    )
    if not token:
        env.problem("IMAGE_STORE_TOKEN is required when SERVICE_TOKENS is empty")
    return settings


def generate_secret(num_bytes: int = 32) -> str:
    """A URL-safe random secret, for `retina up` and tests (never used for production secrets)."""
    import secrets

    return base64.urlsafe_b64encode(secrets.token_bytes(num_bytes)).decode().rstrip("=")
