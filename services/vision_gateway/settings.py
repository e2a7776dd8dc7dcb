"""The vision-gateway's settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar

from pydantic import SecretStr, model_validator

from common.settings.base import EnvSettings, load, setting
from common.settings.kinds import Csv, HttpUrl, HttpUrls, OneOf, Origins
from common.settings.shared import CommonSettings, UploadSettings
from services.vision_gateway.fleet.backend import backend_label

FALLBACK_POLICIES: tuple[str, ...] = ("reject", "fallback_model", "text_only")
GATEWAY = "vision-gateway"


class FallbackSettings(EnvSettings):
    section: ClassVar[str] = GATEWAY

    fallback_policy: Annotated[str, OneOf(FALLBACK_POLICIES)] = setting(
        "VISION_FALLBACK_POLICY",
        "reject",
        doc="Images sent to a model that cannot see: reject (422), fallback_model (answer with "
        "VISION_FALLBACK_MODEL instead), text_only (drop the images).",
    )
    fallback_model: str = setting(
        "VISION_FALLBACK_MODEL", "", doc="The vision model used when VISION_FALLBACK_POLICY=fallback_model."
    )

    @model_validator(mode="after")
    def _model_named_when_needed(self) -> FallbackSettings:
        if self.fallback_policy == "fallback_model" and not self.fallback_model:
            raise ValueError("VISION_FALLBACK_MODEL is required when VISION_FALLBACK_POLICY=fallback_model")
        return self


class FleetSettings(EnvSettings):
    """Several Ollama servers behind one gateway (services/vision_gateway/fleet/)."""

    section: ClassVar[str] = GATEWAY

    explicit_ollama_urls: HttpUrls = setting(
        "OLLAMA_URLS",
        (),
        doc="Ollama backends, comma-separated: each ask goes to a healthy one that has the model (loaded there "
        "preferred, then the least busy; a conversation stays where its last turn ran). Empty: OLLAMA_URL alone.",
        example="http://gpu-a:11434,http://gpu-b:11434",
    )
    ollama_refresh_seconds: float = setting(
        "OLLAMA_REFRESH_SECONDS",
        10.0,
        ge=0.1,
        le=3600.0,
        doc="Seconds between refreshes of each backend's models (/api/tags) and loaded models (/api/ps); a model "
        "found on no backend triggers a refresh at once (at most one such refresh a second).",
    )
    ollama_list_timeout_seconds: float = setting(
        "OLLAMA_LIST_TIMEOUT_SECONDS",
        5.0,
        ge=0.1,
        le=120.0,
        doc="How long a backend may take to list its models (/api/tags, /api/ps) before it counts as down "
        "(for OLLAMA_BACKEND_COOLDOWN_SECONDS, like a refused connection). Each backend is refreshed on its "
        "own: one that never answers delays no other.",
    )
    ollama_backend_cooldown_seconds: float = setting(
        "OLLAMA_BACKEND_COOLDOWN_SECONDS",
        5.0,
        ge=0.1,
        le=3600.0,
        doc="A backend that refuses or times out a connection gets no asks for this long (they go to the others, "
        "or get 503 with Retry-After); then it is probed (/api/tags) and rejoins when it answers. Short by "
        "default: with a single backend it is how long an Ollama restart refuses asks.",
    )

    @model_validator(mode="after")
    def _one_label_per_backend(self) -> FleetSettings:
        # Metrics and routing name a backend by host:port: two URLs there would be one backend twice.
        places = [backend_label(url) for url in self.explicit_ollama_urls]
        if len(set(places)) != len(places):
            raise ValueError("OLLAMA_URLS names two servers at the same host and port")
        return self


class ImageCountSettings(EnvSettings):
    section: ClassVar[str] = GATEWAY

    max_images_per_message: int = setting(
        "VISION_MAX_IMAGES_PER_MESSAGE", 4, ge=1, le=64, doc="Images allowed on one message."
    )
    max_images_per_request: int = setting(
        "VISION_MAX_IMAGES_PER_REQUEST",
        8,
        ge=1,
        le=256,
        doc="Images allowed in total on one request (including history).",
    )

    @model_validator(mode="after")
    def _request_holds_a_message(self) -> ImageCountSettings:
        if self.max_images_per_request < self.max_images_per_message:
            raise ValueError(
                f"VISION_MAX_IMAGES_PER_REQUEST ({self.max_images_per_request}) must be at least "
                f"VISION_MAX_IMAGES_PER_MESSAGE ({self.max_images_per_message})"
            )
        return self


class GatewaySettings(FallbackSettings, FleetSettings, ImageCountSettings, UploadSettings, CommonSettings):
    section: ClassVar[str] = GATEWAY

    host: str = setting("VISION_GATEWAY_HOST", "0.0.0.0", doc="Listen address.")  # noqa: S104 - a container listens on all interfaces
    port: int = setting("VISION_GATEWAY_PORT", 8082, ge=1, le=65535, doc="Listen port.")
    ollama_url: HttpUrl = setting(
        "OLLAMA_URL", "http://127.0.0.1:11434", doc="Ollama's base URL (the one backend when OLLAMA_URLS is empty)."
    )
    image_store_url: HttpUrl = setting("IMAGE_STORE_URL", "http://127.0.0.1:8081", doc="The image-store's base URL.")
    explicit_image_store_token: SecretStr | None = setting(
        "IMAGE_STORE_TOKEN",
        None,
        doc="The token the gateway presents to the image-store (default: the first of SERVICE_TOKENS).",
        shown="",
    )
    model_detection_enabled: bool = setting(
        "VISION_MODEL_DETECTION_ENABLED",
        True,
        doc="Ask Ollama (/api/show) whether a model can see; false trusts every model with images.",
    )
    max_keep_alive_seconds: int = setting(
        "VISION_MAX_KEEP_ALIVE_SECONDS",
        -1,
        ge=-1,
        le=2**31 - 1,
        doc="Longest keep_alive a request may ask Ollama for, in seconds; longer, or negative (for ever), "
        "is 400 bad_request. -1 = no cap.",
    )
    max_num_ctx: int = setting(
        "VISION_MAX_NUM_CTX",
        0,
        ge=0,
        le=131072,
        doc="Largest options.num_ctx a request may ask for (context memory on the Ollama server); "
        "larger is 400 bad_request. 0 = no cap.",
    )
    capability_ttl_seconds: float = setting(
        "VISION_CAPABILITY_TTL_SECONDS", 300.0, ge=0.0, le=86400.0, doc="Seconds a model's capabilities are cached."
    )
    max_image_edge: int = setting(
        "VISION_MAX_IMAGE_EDGE",
        1024,
        ge=64,
        le=8192,
        doc="Longest edge, in pixels, of an image sent to the model (larger images are downscaled).",
    )
    history_messages: int = setting(
        "VISION_HISTORY_MESSAGES", 20, ge=0, le=1000, doc="Earlier messages sent as history."
    )
    history_images: int = setting(
        "VISION_HISTORY_IMAGES", 4, ge=0, le=256, doc="How many of the history's images are re-sent (newest first)."
    )
    image_cache_entries: int = setting(
        "VISION_IMAGE_CACHE_ENTRIES",
        256,
        ge=0,
        le=100000,
        doc="Prepared (downscaled, base64) images kept in memory, keyed by SHA-256: at most this many.",
    )
    image_cache_mb: int = setting(
        "VISION_IMAGE_CACHE_MB", 32, ge=1, le=65536, doc="MiB of base64 that cache may hold in all."
    )
    encode_workers: int = setting(
        "VISION_ENCODE_WORKERS", 2, ge=1, le=64, doc="Threads that downscale and encode images."
    )
    prep_budget_mb: int = setting(
        "VISION_PREP_BUDGET_MB",
        160,
        ge=16,
        le=65536,
        doc="MiB of images being fetched and prepared at once (each costs its file's bytes twice plus 6 bytes "
        "per pixel); past it a request waits up to 5 s, then gets 503 busy. Bounds the gateway's memory.",
    )
    max_streams_per_user: int = setting(
        "VISION_MAX_STREAMS_PER_USER",
        4,
        ge=0,
        le=100000,
        doc="Concurrent stream-message requests per user and replica (0 = no limit); past it, 429 "
        "rate_limited with Retry-After.",
    )
    stream_rate_per_minute: int = setting(
        "VISION_STREAM_RATE_PER_MINUTE",
        30,
        ge=0,
        le=1000000,
        doc="Stream-message requests per user and replica per minute (0 = no limit); past it, 429 rate_limited.",
    )
    ollama_connect_timeout_seconds: float = setting(
        "OLLAMA_CONNECT_TIMEOUT_SECONDS", 5.0, ge=0.1, le=120.0, doc="Ollama connect timeout."
    )
    ollama_read_timeout_seconds: float = setting(
        "OLLAMA_READ_TIMEOUT_SECONDS",
        300.0,
        ge=1.0,
        le=3600.0,
        doc="The longest silence tolerated while reading a stream from Ollama (model loads are slow).",
    )
    upstream_retries: int = setting(
        "UPSTREAM_RETRIES",
        2,
        ge=0,
        le=10,
        doc="Retries (with backoff and jitter) for Ollama / image-store failures before output has started.",
    )
    heartbeat_seconds: float = setting(
        "SSE_HEARTBEAT_SECONDS", 15.0, ge=0.1, le=300.0, doc="Seconds between `: ping` comments on an idle SSE stream."
    )
    known_models: Csv = setting(
        "VISION_KNOWN_MODELS",
        (),
        doc='Model names allowed as metric label values (others are counted as "other"); models Ollama '
        "lists are added automatically.",
    )
    stream_sweep_after_seconds: float = setting(
        "STREAM_SWEEP_AFTER_SECONDS",
        60.0,
        ge=1.0,
        le=86400.0,
        doc="A `streaming` answer that no live replica has touched for this long is closed as `interrupted` "
        "(its gateway died). Each replica touches all the answers it holds every third of this, in one "
        "statement on a connection of its own, however late their progress saves are. Any replica sweeps, "
        "once its own touches have worked for this long without a break.",
    )
    stream_save_retry_seconds: float = setting(
        "STREAM_SAVE_RETRY_SECONDS",
        15.0,
        ge=0.0,
        le=600.0,
        doc="How long the final write of an answer is retried while PostgreSQL is unreachable; the `done` / "
        '`error` event then says `"saved": false` and the answer waits in memory (STREAM_SAVE_QUEUE_SECONDS).',
    )
    stream_save_queue_seconds: float = setting(
        "STREAM_SAVE_QUEUE_SECONDS",
        300.0,
        ge=0.0,
        le=3600.0,
        doc="How long a replica keeps in memory a finished answer it could not store in "
        "STREAM_SAVE_RETRY_SECONDS, retrying in the background: it is stored as soon as PostgreSQL is back. "
        "After that (or on a crash) it is lost and its row is swept as `interrupted`. 0 = keep none.",
    )
    stream_save_queue_mb: int = setting(
        "STREAM_SAVE_QUEUE_MB",
        32,
        ge=1,
        le=4096,
        doc="MiB of such answers a replica keeps at most (with at most 10000 answers); answers that do not "
        "fit are lost.",
    )
    cors_allowed_origins: Origins = setting(
        "GATEWAY_CORS_ALLOWED_ORIGINS",
        (),
        doc="Browser origins allowed to call the gateway's /api routes directly (CORS), comma-separated. Only "
        "for deployments without a chat backend in front; empty: no CORS.",
    )
    demo_page_enabled: bool = setting(
        "DEMO_PAGE_ENABLED",
        False,
        doc="Serve the demo chat page at /demo (plain HTML/JS; `retina up` turns it on). Off in production.",
    )

    @property
    def image_store_token(self) -> SecretStr:
        if self.explicit_image_store_token is not None:
            return self.explicit_image_store_token
        return SecretStr(self.service_tokens.get_secret_value()[0])

    @property
    def ollama_urls(self) -> tuple[str, ...]:
        """The Ollama backends: OLLAMA_URLS when set (it wins), else OLLAMA_URL as a list of one."""
        return self.explicit_ollama_urls or (self.ollama_url,)

    @property
    def image_cache_bytes(self) -> int:
        return self.image_cache_mb * 1024 * 1024

    @property
    def prep_budget_bytes(self) -> int:
        return self.prep_budget_mb * 1024 * 1024

    @property
    def stream_save_queue_bytes(self) -> int:
        return self.stream_save_queue_mb * 1024 * 1024


def load_gateway_settings(environ: Mapping[str, str]) -> GatewaySettings:
    return load(GatewaySettings, environ)
