"""Settings both services read: database, service tokens, logging, and the upload limits the
vision-gateway must agree on with the image-store (it forwards uploads to it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import field_validator, model_validator

from common.settings.base import EnvSettings, setting
from common.settings.kinds import Directory, OneOf, PostgresUrl, SecretCsv, split_csv

BOTH = "both services"
UPLOADS = "uploads (both services: set them alike)"
# The repository's migrations; the container image sets MIGRATIONS_PATH to its own copy.
SOURCE_MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


# Formats the image-store knows how to validate and re-encode. SVG is deliberately absent: it is
# a document that can carry script, not a raster image.
SUPPORTED_IMAGE_TYPES: tuple[str, ...] = ("image/png", "image/jpeg", "image/webp", "image/gif")
DEFAULT_IMAGE_TYPES: tuple[str, ...] = ("image/png", "image/jpeg", "image/webp")


# How the services reach PostgreSQL: directly, or through a pooler in transaction mode.
POOLERS: tuple[str, ...] = ("none", "transaction")


class PoolerSettings(EnvSettings):
    """Whether DATABASE_URL goes through a transaction pooler, and the direct URL for what a
    pooler cannot carry (a group of its own so its rule is reported beside other errors)."""

    section: ClassVar[str] = BOTH

    database_pooler: Annotated[str, OneOf(POOLERS)] = setting(
        "DATABASE_POOLER",
        "none",
        doc="none: DATABASE_URL reaches PostgreSQL itself (or a session-mode pooler). transaction: "
        "DATABASE_URL is a pooler in transaction mode (PgBouncer pool_mode=transaction); pooled "
        "connections then keep no session state (no prepared-statement cache) and DATABASE_DIRECT_URL is "
        "required. See docs/deployment.md.",
    )
    database_direct_url: PostgresUrl | None = setting(
        "DATABASE_DIRECT_URL",
        None,
        doc="PostgreSQL URL that bypasses the pooler: one connection per process for LISTEN (stream stops, "
        "image row-cache invalidation) and session advisory locks (maintenance), and what `retina migrate` "
        "and `retina maintenance` use. Required with DATABASE_POOLER=transaction; empty means DATABASE_URL.",
        shown="",
    )

    @model_validator(mode="after")
    def _direct_url_with_pooler(self) -> PoolerSettings:
        if self.database_pooler == "transaction" and self.database_direct_url is None:
            raise ValueError(
                "DATABASE_DIRECT_URL is required when DATABASE_POOLER=transaction (LISTEN, session locks and "
                "migrations cannot go through a transaction pooler)"
            )
        return self

    @property
    def transaction_pooler(self) -> bool:
        return self.database_pooler == "transaction"

    @property
    def separate_direct_url(self) -> str | None:
        """DATABASE_DIRECT_URL when it is set (None: DATABASE_URL serves for everything)."""
        return self.database_direct_url.get_secret_value() if self.database_direct_url else None


class DatabaseSettings(PoolerSettings):
    """All `retina migrate` needs (it serves nothing, so no tokens or keys)."""

    section: ClassVar[str] = BOTH

    database_url: PostgresUrl = setting(
        "DATABASE_URL",
        doc="PostgreSQL URL (asyncpg / psycopg form).",
        required="postgresql://user:password@host:port/database",
        example="postgresql://retina:CHANGE-ME@127.0.0.1:5432/retina",
    )
    migrations_path: Directory = setting(
        "MIGRATIONS_PATH",
        SOURCE_MIGRATIONS,
        doc="Directory of yoyo migrations (set in the container image; defaults to ./migrations of the source tree).",
        shown="./migrations",
    )

    @property
    def direct_url(self) -> str:
        """Where session state may live (LISTEN, session locks, migrations): the direct URL if set."""
        url = self.database_direct_url or self.database_url
        return url.get_secret_value()


class PoolSettings(EnvSettings):
    section: ClassVar[str] = BOTH

    db_pool_min_size: int = setting(
        "DB_POOL_MIN_SIZE",
        1,
        ge=0,
        le=100,
        doc="asyncpg pool size per process (smallest). Size against Postgres max_connections x replicas.",
    )
    db_pool_max_size: int = setting("DB_POOL_MAX_SIZE", 5, ge=1, le=100, doc="asyncpg pool size per process (largest).")

    @model_validator(mode="after")
    def _min_within_max(self) -> PoolSettings:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError(
                f"DB_POOL_MIN_SIZE ({self.db_pool_min_size}) must not exceed DB_POOL_MAX_SIZE ({self.db_pool_max_size})"
            )
        return self


class CommonSettings(PoolSettings, DatabaseSettings):
    """What every service needs to run; the service settings extend it."""

    section: ClassVar[str] = BOTH

    service_tokens: SecretCsv = setting(
        "SERVICE_TOKENS",
        doc="Bearer tokens internal callers present, comma-separated (at least 16 characters each). "
        "The first is current; keep the previous one listed while rotating.",
        required="comma-separated bearer tokens",
        example="CHANGE-ME-to-a-long-random-token",
    )
    log_level: Annotated[str, OneOf(("debug", "info", "warning", "error"))] = setting(
        "LOG_LEVEL", "info", doc="Log level."
    )
    log_format: Annotated[str, OneOf(("json", "console"))] = setting(
        "LOG_FORMAT", "json", doc="Log format: json (one JSON object per line), console (for people at a terminal)."
    )
    event_loop: Annotated[str, OneOf(("uvloop", "asyncio"))] = setting(
        "EVENT_LOOP",
        "uvloop",
        doc="Event loop the service runs on: uvloop (libuv; less CPU per request) or asyncio (the "
        "standard library's, to rule uvloop out when chasing a problem).",
    )
    shutdown_timeout_seconds: float = setting(
        "SHUTDOWN_TIMEOUT_SECONDS",
        20.0,
        ge=0.0,
        le=600.0,
        doc="Seconds to let open requests and streams finish after SIGTERM. Keep it below the pod's "
        "terminationGracePeriodSeconds minus the preStop delay.",
    )

    @field_validator("service_tokens")
    @classmethod
    def _tokens_long_enough(cls, tokens: SecretCsv) -> SecretCsv:
        if not tokens.get_secret_value():
            raise ValueError("must name at least one token")
        if any(len(token) < 16 for token in tokens.get_secret_value()):
            raise ValueError(": every token must be at least 16 characters long")
        return tokens

    @property
    def common(self) -> CommonSettings:
        """The part both services share. A service's settings *are* common settings (one flat set
        of variables); this keeps call sites saying which part they use."""
        return self


class UploadClockSettings(EnvSettings):
    """The slow-upload clocks, a group of their own so their rule is checked even when another
    upload setting is broken."""

    section: ClassVar[str] = UPLOADS

    upload_idle_timeout_seconds: float = setting(
        "IMAGE_UPLOAD_IDLE_TIMEOUT_SECONDS",
        30.0,
        ge=0.1,
        le=3600.0,
        doc="A slow upload body is cut with 408 request_timeout (connection closed, nothing kept) when no "
        "byte arrives for this long.",
    )
    upload_deadline_seconds: float = setting(
        "IMAGE_UPLOAD_DEADLINE_SECONDS",
        300.0,
        ge=0.5,
        le=86400.0,
        doc="An upload body that has not fully arrived this long after it started is cut the same way. The "
        "vision-gateway's timeout for forwarding an upload to the image-store is derived from both clocks.",
    )

    @model_validator(mode="after")
    def _idle_within_deadline(self) -> UploadClockSettings:
        idle, deadline = self.upload_idle_timeout_seconds, self.upload_deadline_seconds
        if idle > deadline:
            raise ValueError(
                f"IMAGE_UPLOAD_IDLE_TIMEOUT_SECONDS ({idle:g}) must not exceed "
                f"IMAGE_UPLOAD_DEADLINE_SECONDS ({deadline:g})"
            )
        return self


class UploadSettings(UploadClockSettings):
    """Read by both services: the gateway relays multipart uploads to the image-store, and its
    timeouts towards the store are derived from the store's clocks, so both must agree; its demo
    page offers only the types the store accepts."""

    section: ClassVar[str] = UPLOADS

    upload_enabled: bool = setting(
        "IMAGE_UPLOAD_ENABLED",
        True,
        doc="false: uploads answer 503 upload_disabled, serving existing images continues. Also applies "
        "to multipart uploads through the vision-gateway.",
    )
    max_size_mb: int = setting(
        "IMAGE_MAX_SIZE_MB",
        10,
        ge=1,
        le=1024,
        doc="Largest accepted upload in MiB (checked while streaming, and from Content-Length up front).",
    )
    allowed_types: frozenset[str] = setting(
        "IMAGE_ALLOWED_TYPES",
        DEFAULT_IMAGE_TYPES,
        doc="Accepted types, detected from the bytes: any of " + ", ".join(SUPPORTED_IMAGE_TYPES) + ". "
        "SVG is never accepted.",
    )
    serve_endpoint: str = setting(
        "IMAGE_SERVE_ENDPOINT",
        "/api/images",
        doc="Path prefix of the image routes (the vision-gateway uses it to reach the image-store too).",
    )

    @field_validator("allowed_types", mode="before")
    @classmethod
    def _known_raster_types(cls, value: Any) -> frozenset[str]:
        types = tuple(mime.lower() for mime in split_csv(value))
        problems = []
        for mime in types:
            if mime == "image/svg+xml":
                problems.append(": image/svg+xml is never allowed (SVG can carry script)")
            elif mime not in SUPPORTED_IMAGE_TYPES:
                problems.append(f": unknown type {mime!r}; supported: " + ", ".join(SUPPORTED_IMAGE_TYPES))
        if not types:
            problems.append("must name at least one type")
        if problems:
            raise ValueError("\n".join(problems))
        return frozenset(types)

    @field_validator("serve_endpoint")
    @classmethod
    def _a_path(cls, endpoint: str) -> str:
        endpoint = endpoint.rstrip("/")
        if not endpoint.startswith("/") or "{" in endpoint or " " in endpoint:
            raise ValueError(f"must be a path starting with '/', got {endpoint!r}")
        return endpoint

    @property
    def max_size_bytes(self) -> int:
        return self.max_size_mb * 1024 * 1024
