"""One Ollama backend: its client, what it last said it has, whether it is up, how busy it is."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from services.vision_gateway.ollama_client import OllamaClient


def backend_label(url: str) -> str:
    """host:port of a backend URL, for metrics and logs: never its credentials or path."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def model_key(name: str) -> str:
    """How Ollama resolves a model name: case-insensitive, tag `latest` by default, the default
    registry and namespace optional. `llava`, `LLaVA` and `library/llava:latest` are one model."""
    wanted = name.strip().lower()
    for prefix in ("registry.ollama.ai/library/", "registry.ollama.ai/", "library/"):
        if wanted.startswith(prefix):
            wanted = wanted[len(prefix) :]
            break
    if ":" not in wanted.rsplit("/", 1)[-1]:
        wanted += ":latest"
    return wanted


class Backend:
    """State changes only through BackendRegistry (refresh, health) and OllamaFleet (streams)."""

    def __init__(self, client: OllamaClient, url: str, index: int) -> None:
        self.client = client
        self.label = backend_label(url)
        self.index = index  # its place in OLLAMA_URLS (routing's tie-break rotates over it)
        self.names: dict[str, str] = {}  # model key -> the name as /api/tags lists it
        self.digests: dict[str, str] = {}  # model key -> digest ("" when Ollama sent none)
        self.loaded: set[str] = set()  # model keys in memory (/api/ps), plus those it served since
        self.listed = False  # /api/tags answered at least once: an absent model is really absent
        self.down_until: float | None = None  # marked down until then (then probed); None: up
        self.down_at: float | None = None  # when it was last marked down (a refresh begun before can't undo it)
        self.listing_timeouts = 0  # listings in a row that got no answer in time (LISTING_TIMEOUTS_DOWN: down)
        self.failure = ""  # why its last refresh or attempt failed, for a 503's message
        self.failure_detail = ""  # the exception behind it, for the log
        self.in_flight = 0

    @property
    def up(self) -> bool:
        return self.down_until is None

    def has(self, key: str) -> bool:
        return key in self.names

    def take_listing(self, tags: Iterable[dict[str, Any]], running: Iterable[dict[str, Any]]) -> None:
        names: dict[str, str] = {}
        digests: dict[str, str] = {}
        for entry in tags:
            name = str(entry.get("name") or entry.get("model") or "")
            if name:
                names[model_key(name)] = name
                digests[model_key(name)] = str(entry.get("digest") or "")
        self.names, self.digests = names, digests
        self.loaded = {model_key(str(e.get("name") or e.get("model") or "")) for e in running} & set(names)
        self.listed = True
        self.listing_timeouts = 0
