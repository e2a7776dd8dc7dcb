"""VisionModelService: can this model see? Asked of Ollama once per model per TTL.

Ollama >= 0.6.4 lists `capabilities`; older servers are read through the signals they did
have: a projector (`projector_info`, or `clip` in `details.families`), `mllama` in families,
or a `*.vision.block_count` key in `model_info`. Concurrent look-ups share one request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache

from common.errors import UnknownModel
from common.singleflight import SingleFlight
from services.vision_gateway.metrics import GatewayMetrics
from services.vision_gateway.ollama_client import OllamaClient

# Model names remembered at most (known and unknown); the least recently used go first.
MODEL_CACHE_ENTRIES = 1024


@dataclass(frozen=True, slots=True)
class ModelCapabilities:
    name: str
    vision: bool
    capabilities: tuple[str, ...]


def detect_vision(show: dict[str, Any]) -> tuple[bool, tuple[str, ...]]:
    capabilities = show.get("capabilities")
    if isinstance(capabilities, list):
        names = tuple(str(c) for c in capabilities)
        return "vision" in names, names
    details = show.get("details") or {}
    families = [str(f).lower() for f in (details.get("families") or [])]
    model_info = show.get("model_info") or {}
    vision = (
        bool(show.get("projector_info"))
        or "clip" in families
        or "mllama" in families
        or any(str(key).endswith(".vision.block_count") for key in model_info)
    )
    return vision, (("completion", "vision") if vision else ("completion",))


class VisionModelService:
    def __init__(
        self,
        ollama: OllamaClient,
        metrics: GatewayMetrics,
        *,
        ttl_seconds: float,
        detection_enabled: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ollama = ollama
        self._metrics = metrics
        self._detection_enabled = detection_enabled
        # Bounded: model names come from clients, and every unknown one is remembered (as None).
        self._cache: TTLCache[str, ModelCapabilities | None] | None = (
            TTLCache(MODEL_CACHE_ENTRIES, ttl=ttl_seconds, timer=clock) if ttl_seconds > 0 else None
        )
        self._flights: SingleFlight[str, ModelCapabilities | None] = SingleFlight()

    async def get(self, model: str) -> ModelCapabilities:
        """Capabilities of `model`; UnknownModel when Ollama does not have it."""
        if not self._detection_enabled:
            return ModelCapabilities(model, True, ("completion", "vision"))
        key = model.lower()
        try:
            if self._cache is None:
                raise KeyError(key)
            result = self._cache[key]  # one read: a separate `in` test could see it expire in between
            self._metrics.capability_cache.labels("hit").inc()
        except KeyError:
            self._metrics.capability_cache.labels("miss").inc()
            result = await self._flights.run(key, lambda: self._lookup(key, model))
        if result is None:
            raise UnknownModel(f"model {model!r} is not available on the Ollama server")
        self._metrics.known_models.add(model)
        return result

    async def _lookup(self, key: str, model: str) -> ModelCapabilities | None:
        show = await self._ollama.show(model)
        result = None if show is None else ModelCapabilities(model, *detect_vision(show))
        if self._cache is not None:
            self._cache[key] = result
        return result

    async def list_models(self) -> list[ModelCapabilities]:
        models = []
        for entry in await self._ollama.tags():
            name = str(entry.get("name") or entry.get("model") or "")
            if not name:
                continue
            try:
                models.append(await self.get(name))
            except UnknownModel:
                continue  # removed between the listing and the look-up
        return models
