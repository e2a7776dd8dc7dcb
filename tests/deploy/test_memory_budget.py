"""Worst-case memory of each pod, computed from the shipped settings, must fit the pod's limit.

The vision-gateway's worst case (docs/operations.md#memory-and-admission):

    idle process + runtime slack
      + max(VISION_PREP_BUDGET_MB, prep_cost of the largest image the store accepts)
      + VISION_IMAGE_CACHE_MB

The prep budget bounds every image between download and encode; an image costing more than the
whole budget is admitted alone, so the larger of the two counts. The largest image is the
store's IMAGE_MAX_SIZE_MB file decoding to IMAGE_MAX_PIXELS pixels. `prep_cost` is checked
against the real peak of preparing 40 MP images in tests/vision_gateway/test_admission.py.
Not in the formula: per open stream, ~40 KiB plus the prepared images its request carries
(bench/RESULTS.md), which scale with streams per pod (the HPA's target), not with image size.
"""

from __future__ import annotations

from typing import Any

import pytest

from services.vision_gateway.admission import prep_cost
from tests.deploy.helpers import OVERLAYS, named, pod_spec, render

GATEWAY = "retina-vision-gateway"
MIB = 1024 * 1024
# Measured: the gateway's RSS after start-up is 52 MiB (bench/gateway_memory_bench.py, idle).
GATEWAY_IDLE_MIB = 64
# aiohttp buffers of 40 concurrent requests, prepared images in flight, allocator fragmentation:
# the 40-different-images burst peaked 138 MiB above idle with a 128 MiB budget full.
GATEWAY_SLACK_MIB = 64

UNITS = {"Ki": 1024, "Mi": MIB, "Gi": 1024 * MIB}


def quantity_bytes(value: str) -> int:
    for suffix, factor in UNITS.items():
        if value.endswith(suffix):
            return int(value.removesuffix(suffix)) * factor
    raise AssertionError(f"unexpected memory quantity {value!r}")


def gateway_worst_case_bytes(config: dict[str, Any]) -> int:
    largest_image = prep_cost(
        int(config["IMAGE_MAX_SIZE_MB"]) * MIB,
        int(config["IMAGE_MAX_PIXELS"]),
        1,
    )
    budget = int(config["VISION_PREP_BUDGET_MB"]) * MIB
    cache = int(config["VISION_IMAGE_CACHE_MB"]) * MIB
    return (GATEWAY_IDLE_MIB + GATEWAY_SLACK_MIB) * MIB + max(budget, largest_image) + cache


@pytest.mark.parametrize("target", ["base", *OVERLAYS])
def test_gateway_worst_case_fits_its_memory_limit(target: str) -> None:
    documents = render(target)
    config = named(documents, "ConfigMap", "retina-config")["data"]
    [container] = pod_spec(named(documents, "Deployment", GATEWAY))["containers"]
    limit = quantity_bytes(container["resources"]["limits"]["memory"])
    worst = gateway_worst_case_bytes(config)
    print(f"{target}: gateway worst case {worst / MIB:.0f} MiB of a {limit / MIB:.0f} MiB limit")
    assert worst <= limit, f"{target}: worst case {worst / MIB:.0f} MiB exceeds the {limit / MIB:.0f} MiB limit"


def test_the_formula_grows_with_the_settings() -> None:
    """The check can fail: a budget or cache past the limit is caught."""
    shipped = {
        "IMAGE_MAX_SIZE_MB": "20",
        "IMAGE_MAX_PIXELS": "40000000",
        "VISION_PREP_BUDGET_MB": "160",
        "VISION_IMAGE_CACHE_MB": "32",
    }
    base = gateway_worst_case_bytes(shipped)
    assert gateway_worst_case_bytes({**shipped, "VISION_PREP_BUDGET_MB": "600"}) > 512 * MIB
    assert gateway_worst_case_bytes({**shipped, "VISION_IMAGE_CACHE_MB": "64"}) == base + 32 * MIB
    assert gateway_worst_case_bytes({**shipped, "IMAGE_MAX_PIXELS": "80000000"}) > base
