"""VisionModelService: can this model see? Asked of Ollama once per model per TTL.

Ollama >= 0.6.4 lists `capabilities`; older servers are read through the signals they did
have: a projector (`projector_info`, or `clip` in `details.families`), `mllama` in families,
or a `*.vision.block_count` key in `model_info`. Concurrent look-ups share one request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.vision_gateway.errors import UnknownModel
from services.vision_gateway.metrics import GatewayMetrics
from services.vision_gateway.ollama_client import OllamaClient


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
        self._ttl = ttl_seconds
        self._detection_enabled = detection_enabled
        self._clock = clock
        self._cache: dict[str, tuple[float, ModelCapabilities | None]] = {}
        self._inflight: dict[str, asyncio.Future[ModelCapabilities | None]] = {}

    async def get(self, model: str) -> ModelCapabilities:
        """Capabilities of `model`; UnknownModel when Ollama does not have it."""
        if not self._detection_enabled:
            return ModelCapabilities(model, True, ("completion", "vision"))
        key = model.lower()
        cached = self._cache.get(key)
        if cached is not None and self._clock() - cached[0] < self._ttl:
            self._metrics.capability_cache.labels("hit").inc()
            result = cached[1]
        else:
            self._metrics.capability_cache.labels("miss").inc()
            result = await self._lookup_shared(key, model)
        if result is None:
            raise UnknownModel(f"model {model!r} is not available on the Ollama server")
        self._metrics.known_models.add(model)
        return result

    async def _lookup_shared(self, key: str, model: str) -> ModelCapabilities | None:
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ModelCapabilities | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            show = await self._ollama.show(model)
            result = None if show is None else ModelCapabilities(model, *detect_vision(show))
            self._cache[key] = (self._clock(), result)
            future.set_result(result)
            return result
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            del self._inflight[key]

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
