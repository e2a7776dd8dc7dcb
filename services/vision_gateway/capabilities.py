"""VisionModelService: can this model see? Asked of Ollama once per model build (digest) per TTL,
whichever backends have it; whether a model exists at all is the fleet's listing (fleet/registry.py).

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
from services.vision_gateway.fleet.backend import Backend, model_key
from services.vision_gateway.fleet.fleet import OllamaFleet
from services.vision_gateway.metrics import GatewayMetrics

# Models remembered at most; the least recently used go first.
MODEL_CACHE_ENTRIES = 1024

Detected = tuple[bool, tuple[str, ...]]  # (can see, capabilities)


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
        fleet: OllamaFleet,
        metrics: GatewayMetrics,
        *,
        ttl_seconds: float,
        detection_enabled: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fleet = fleet
        self._metrics = metrics
        self._detection_enabled = detection_enabled
        # Keyed by digest: backends with the same model share one look-up. Bounded all the same.
        self._cache: TTLCache[str, Detected] | None = (
            TTLCache(MODEL_CACHE_ENTRIES, ttl=ttl_seconds, timer=clock) if ttl_seconds > 0 else None
        )
        self._flights: SingleFlight[str, Detected | None] = SingleFlight()

    async def get(self, model: str) -> ModelCapabilities:
        """Capabilities of `model`; UnknownModel when no Ollama backend has it."""
        if not self._detection_enabled:
            return ModelCapabilities(model, True, ("completion", "vision"))
        holders = await self._fleet.holders(model)
        key = model_key(model)
        # The digest of a backend that is up (another digest elsewhere is another build of the model).
        digest = next(b.digests.get(key, "") for b in (*(b for b in holders if b.up), *holders))
        same = [b for b in holders if b.digests.get(key, "") == digest]
        cache_key = digest or f"name:{key}"
        try:
            if self._cache is None:
                raise KeyError(cache_key)
            result: Detected | None = self._cache[cache_key]  # one read: an `in` test could see it expire between
            self._metrics.capability_cache.labels("hit").inc()
        except KeyError:
            self._metrics.capability_cache.labels("miss").inc()
            result = await self._flights.run(cache_key, lambda: self._lookup(cache_key, model, same))
        if result is None:
            raise UnknownModel(f"model {model!r} is not available on the Ollama server")
        self._metrics.known_models.add(model)
        return ModelCapabilities(model, *result)

    async def _lookup(self, cache_key: str, model: str, holders: list[Backend]) -> Detected | None:
        show = await self._fleet.show(model, holders)
        if show is None:
            return None  # removed since the listing: not remembered, the next listing will say
        result = detect_vision(show)
        if self._cache is not None:
            self._cache[cache_key] = result
        return result

    async def list_models(self) -> list[ModelCapabilities]:
        """Every model of every backend, once."""
        models = []
        for name in await self._fleet.model_names():
            try:
                models.append(await self.get(name))
            except UnknownModel:
                continue  # removed between the listing and the look-up
        return models
