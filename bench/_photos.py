"""Real photographs shipped inside scikit-image's wheel (found without importing skimage)."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def photo(name: str) -> bytes:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-image is not installed (pip install -e '.[dev]')")
    return (Path(spec.submodule_search_locations[0]) / "data" / name).read_bytes()
