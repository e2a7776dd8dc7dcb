"""common/collector.py: a service that grows many long-lived objects is not paused by full collections.

Each case runs in a fresh interpreter: the collector's thresholds are process-wide, and the rule
that starts full collections depends on how many objects the process keeps already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# Grows 300,000 long-lived tracked objects (as opening ~2,000 streams does), counting collections
# by generation; then drops a reference cycle that had grown old and runs a full collection.
GROW = """
import gc, json, sys
from common.collector import collect_old_objects_rarely, freeze_startup_objects

freeze_startup_objects()
if sys.argv[1] == "tuned":
    collect_old_objects_rarely()
counts = [0, 0, 0]

def count(phase, info):
    if phase == "stop":
        counts[info["generation"]] += 1

gc.callbacks.append(count)
held = [[] for _ in range(300_000)]
grown = list(counts)
cycle = [[]]
cycle[0].append(cycle)
for _ in range(3):
    gc.collect(1)  # the cycle is old now: only a full collection finds it
del cycle
print(json.dumps({"collections": grown, "cycle_freed_by_young": gc.collect(1), "cycle_freed_by_full": gc.collect()}))
"""


def grow(mode: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", GROW, mode], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    return dict(json.loads(result.stdout))


def test_growing_many_long_lived_objects_sets_off_no_full_collection() -> None:
    default, tuned = grow("default"), grow("tuned")

    young, middle, full = tuned["collections"]
    assert default["collections"][2] >= 3, f"the default would pause for full collections: {default}"
    assert full == 0, f"no full collection while the objects grew: {tuned}"
    assert young >= 0.9 * default["collections"][0], "young collections still run"
    assert middle >= 0.9 * default["collections"][1], "generation-1 collections still run"


def test_an_old_reference_cycle_is_still_freed_by_a_full_collection() -> None:
    tuned = grow("tuned")

    assert tuned["cycle_freed_by_young"] == 0
    assert tuned["cycle_freed_by_full"] == 2
