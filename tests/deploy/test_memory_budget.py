"""Worst-case memory of each service, from its settings and the rendered manifests, against the
pod's memory limit (issue 8 item 5: two WebP bombs used to take the image-store past 1 Gi).

Each service has a formula in its own code (the image-store's: decode_budget.worst_case_resident_bytes,
whose constants come from bench/RESULTS.md "Decode memory" and are re-checked against the real
process by tests/image_store/test_decode_memory.py). This test feeds it what a pod really gets:
the settings defaults, overridden by the ConfigMap and the container's env, per overlay.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import K8S, ROOT, TARGETS, named, pod_spec, render

MIB = 1024 * 1024
_UNITS = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "K": 1000, "M": 1000**2, "G": 1000**3, "": 1}


def quantity_bytes(quantity: str | int) -> int:
    """A Kubernetes memory quantity ("1Gi", "768Mi", "512M", "1073741824") in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", str(quantity))
    assert match, f"unsupported memory quantity {quantity!r}"
    return int(float(match.group(1)) * _UNITS[match.group(2) or ""])


def pod_environment(
    documents: list[dict[str, Any]], deployment: str, tmp_path: Path
) -> tuple[dict[str, str], dict[str, Any]]:
    """The container, and the environment it starts with (ConfigMap, Secret template, its own env)."""
    config = named(documents, "ConfigMap", "retina-config")["data"]
    secret = yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())["stringData"]
    [container] = pod_spec(named(documents, "Deployment", deployment))["containers"]
    own = {item["name"]: item["value"] for item in container.get("env", [])}
    environ = {**config, **secret, **own}
    environ["IMAGE_STORAGE_PATH"] = str(tmp_path / "images")  # the container's path, made creatable here
    environ["MIGRATIONS_PATH"] = str(ROOT / "migrations")
    return environ, container


def image_store_worst_case(environ: dict[str, str]) -> tuple[int, str]:
    from services.image_store.imaging.decode_budget import worst_case_resident_bytes
    from services.image_store.settings import load_image_store_settings

    settings = load_image_store_settings(environ)
    worst = worst_case_resident_bytes(
        workers=settings.decode_workers, budget_bytes=settings.decode_budget_bytes, max_pixels=settings.max_pixels
    )
    detail = (
        f"{settings.decode_workers} workers, budget {settings.decode_budget_bytes // MIB} MiB, "
        f"max {settings.max_pixels} px"
    )
    return worst, detail


# Measured: the gateway's RSS after start-up is 52 MiB (bench/gateway_memory_bench.py, idle).
GATEWAY_IDLE_MIB = 64
# aiohttp buffers of 40 concurrent requests, prepared images in flight, allocator fragmentation:
# the 40-different-images burst peaked 138 MiB above idle with a 128 MiB budget full.
GATEWAY_SLACK_MIB = 64


def gateway_worst_case(environ: dict[str, str]) -> tuple[int, str]:
    """idle + slack + max(VISION_PREP_BUDGET_MB, prep cost of the largest accepted image) + image cache
    + the queue of answers waiting for PostgreSQL (STREAM_SAVE_QUEUE_MB of text, held twice: str and
    the encoded parameter).

    The prep budget bounds every image between download and encode; an image costing more than the
    whole budget is admitted alone, so the larger of the two counts (docs/operations.md). Not in the
    formula: ~40 KiB per open stream plus its prepared images, which scale with streams per pod.
    """
    from services.image_store.settings import load_image_store_settings
    from services.vision_gateway.admission import prep_cost
    from services.vision_gateway.settings import load_gateway_settings

    gateway = load_gateway_settings(environ)
    max_pixels = load_image_store_settings(environ).max_pixels  # what the store lets in
    largest = prep_cost(gateway.max_size_bytes, max_pixels, 1)
    worst = (
        (GATEWAY_IDLE_MIB + GATEWAY_SLACK_MIB) * MIB
        + max(gateway.prep_budget_bytes, largest)
        + gateway.image_cache_bytes
        + 2 * gateway.stream_save_queue_mb * MIB
    )
    detail = (
        f"prep budget {gateway.prep_budget_bytes // MIB} MiB, largest image {largest // MIB} MiB, "
        f"cache {gateway.image_cache_bytes // MIB} MiB, unsaved answers {gateway.stream_save_queue_mb} MiB"
    )
    return worst, detail


WORST_CASES: list[tuple[str, Callable[[dict[str, str]], tuple[int, str]]]] = [
    ("retina-image-store", image_store_worst_case),
    ("retina-vision-gateway", gateway_worst_case),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize(("deployment", "worst_case"), WORST_CASES, ids=[name for name, _ in WORST_CASES])
def test_worst_case_memory_fits_the_pod_limit(
    target: str, deployment: str, worst_case: Callable[[dict[str, str]], tuple[int, str]], tmp_path: Path
) -> None:
    environ, container = pod_environment(render(target), deployment, tmp_path)
    limit = quantity_bytes(container["resources"]["limits"]["memory"])
    worst, detail = worst_case(environ)
    print(f"{target} {deployment}: worst case {worst / MIB:.0f} MiB of {limit / MIB:.0f} MiB ({detail})")
    assert worst <= limit, (
        f"{target}: {deployment} can reach {worst / MIB:.0f} MiB ({detail}) but its pod limit is "
        f"{limit / MIB:.0f} MiB: lower the budget or the workers, or raise the limit"
    )


def test_default_settings_fit_the_base_pod(tmp_path: Path) -> None:
    """The defaults in common/settings/ alone (no ConfigMap) must fit the shipped limit too."""
    from services.image_store.imaging.decode_budget import worst_case_resident_bytes
    from services.image_store.settings import load_image_store_settings

    _, container = pod_environment(render("base"), "retina-image-store", tmp_path)
    limit = quantity_bytes(container["resources"]["limits"]["memory"])
    required = {
        "DATABASE_URL": "postgresql://x@localhost/x",
        "SERVICE_TOKENS": "t" * 32,
        "IMAGE_SIGNING_KEYS": "k" * 40,
        "IMAGE_STORAGE_PATH": str(tmp_path),
    }
    defaults = load_image_store_settings(required)
    worst = worst_case_resident_bytes(
        workers=defaults.decode_workers, budget_bytes=defaults.decode_budget_bytes, max_pixels=defaults.max_pixels
    )
    assert worst <= limit, f"defaults reach {worst / MIB:.0f} MiB, over the {limit / MIB:.0f} MiB limit"


def test_the_gateway_formula_grows_with_its_settings(tmp_path: Path) -> None:
    """The check can fail: a budget or cache past the limit is caught."""
    environ = {
        "DATABASE_URL": "postgresql://x@localhost/x",
        "SERVICE_TOKENS": "t" * 32,
        "IMAGE_SIGNING_KEYS": "k" * 40,
        "IMAGE_STORAGE_PATH": str(tmp_path),
    }
    base, _ = gateway_worst_case(environ)
    assert gateway_worst_case({**environ, "VISION_PREP_BUDGET_MB": "600"})[0] > 512 * MIB
    assert gateway_worst_case({**environ, "VISION_IMAGE_CACHE_MB": "64"})[0] == base + 32 * MIB
    assert gateway_worst_case({**environ, "IMAGE_MAX_PIXELS": "80000000"})[0] > base


@pytest.mark.parametrize(
    ("text", "expected"), [("1Gi", 1024**3), ("768Mi", 768 * MIB), ("512M", 512 * 10**6), ("1000", 1000)]
)
def test_quantity_bytes(text: str, expected: int) -> None:
    assert quantity_bytes(text) == expected
