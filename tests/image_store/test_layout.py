"""The image-store's folders say what lives where, and imports only run downwards.

Floors, top to bottom: the app; the HTTP edge and maintenance (beside each other, neither uses
the other); the service layer; storage, the repository and the row cache; imaging and the small
shared modules. A module may import from its own floor only inside its own package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import services.image_store

PACKAGE = Path(services.image_store.__file__).parent
PREFIX = "services.image_store."

FLOORS: dict[str, int] = {
    "app": 5,
    "http": 4,
    "maintenance": 4,
    "service": 3,
    "uploads": 3,
    "lookup": 3,
    "deletion": 3,
    "storage": 2,
    "repository": 2,
    "row_cache": 2,
    "imaging": 1,
    "models": 1,
    "metrics": 1,
    "filenames": 1,
    "settings": 1,
}
# Within the service layer, uploads and lookup sit on deletion, and service on all three.
SERVICE_ORDER = {"deletion": 0, "lookup": 0, "uploads": 1, "service": 2}


def _modules() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        imports = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PREFIX):
                imports.add(node.module.removeprefix(PREFIX))
            elif isinstance(node, ast.Import):
                imports |= {a.name.removeprefix(PREFIX) for a in node.names if a.name.startswith(PREFIX)}
        found[name] = imports
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


def test_every_module_has_a_floor() -> None:
    assert {_top(m) for m in _modules() if m != "__init__"} <= FLOORS.keys()


def _may_import(here: str, there: str) -> bool:
    if here == there or FLOORS[there] < FLOORS[here]:
        return True
    if here in SERVICE_ORDER and there in SERVICE_ORDER:
        return SERVICE_ORDER[there] < SERVICE_ORDER[here]
    return FLOORS[here] == FLOORS[there] == 1  # the bottom floor's small modules may share


def test_imports_only_run_downwards() -> None:
    wrong = [
        f"{module} -> {imported}"
        for module, imports in _modules().items()
        if not module.endswith("__init__")
        for imported in imports
        if not _may_import(_top(module), _top(imported))
    ]
    assert wrong == []


def test_package_inits_only_say_what_lives_there() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        assert all(isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) for s in body), init
