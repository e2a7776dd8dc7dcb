"""`.env.example` and docs/configuration.md, generated from the settings models.

    python -m common.settings.docs          # rewrite both files
    python -m common.settings.docs --check  # exit 1 if either is stale (tests/common/test_settings_docs.py)

The models' Field descriptions, defaults and limits are the single source; a variable a model reads
but no group below lists fails the generator, so a new setting cannot go undocumented.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import annotated_types
from pydantic.fields import FieldInfo

from common.settings.base import EnvSettings
from common.settings.gateway import FallbackSettings, GatewaySettings, ImageCountSettings
from common.settings.kinds import OneOf
from common.settings.shared import CommonSettings, DatabaseSettings, PoolSettings, UploadClockSettings, UploadSettings
from common.settings.store import BrowserSettings, ImageStoreSettings, StorageBackendSettings

ROOT = Path(__file__).resolve().parents[2]
# Documentation order; each group contributes the fields it declares itself.
GROUPS: tuple[type[EnvSettings], ...] = (
    DatabaseSettings,
    PoolSettings,
    CommonSettings,
    UploadSettings,
    UploadClockSettings,
    ImageStoreSettings,
    StorageBackendSettings,
    BrowserSettings,
    GatewaySettings,
    FallbackSettings,
    ImageCountSettings,
)
SERVICES: tuple[type[EnvSettings], ...] = (ImageStoreSettings, GatewaySettings)
WIDTH = 100

ENV_HEADER = """\
# retina configuration. Every variable, its default and its meaning.
# Generated from common/settings/ by `python -m common.settings.docs`: edit the models, not this file.
# Lines starting with "# NAME=" show the default and may be left unset; uncommented ones are required.
# `retina up` fills in DATABASE_URL (embedded PostgreSQL), SERVICE_TOKENS and IMAGE_SIGNING_KEYS for you.
"""

MD_HEADER = """\
# Configuration

<!-- Generated from common/settings/ by `python -m common.settings.docs`: edit the models, not this file. -->

Both services read environment variables only, validated at start-up: every problem is reported
at once, one line each, and the process exits with status 2 (secrets are never printed).
[`.env.example`](../.env.example) lists the same variables as a file to copy.
"""


def sections() -> Iterator[tuple[str, str, list[FieldInfo]]]:
    """(title, note, fields) in documentation order; fields of groups sharing a title merge."""
    order: dict[str, tuple[str, list[FieldInfo]]] = {}
    for group in GROUPS:
        own = [field for name, field in group.model_fields.items() if name in vars(group).get("__annotations__", {})]
        title = str(getattr(group, "section", ""))
        note, fields = order.setdefault(title, ("", []))
        order[title] = (note or str(vars(group).get("note", "")), fields + own)
    documented = {str(field.validation_alias) for _, fields in order.values() for field in fields}
    read = {str(field.validation_alias) for model in SERVICES for field in model.model_fields.values()}
    if read - documented:
        raise SystemExit(f"add the group declaring {sorted(read - documented)} to GROUPS in {__file__}")
    for title, (note, fields) in order.items():
        yield title, note, fields


def default_of(field: FieldInfo) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "shown" in extra:
        return str(extra["shown"])
    value = field.default
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return ""
    if isinstance(value, tuple | frozenset):
        return ",".join(value)
    return _number(value)


def allowed(field: FieldInfo) -> str:
    """What values pass: a choice, a range, a flag; empty when only the description says."""
    for item in field.metadata:
        if isinstance(item, OneOf):
            return " | ".join(item.values)
    low = next((m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
    high = next((m.le for m in field.metadata if isinstance(m, annotated_types.Le)), None)
    if low is not None and high is not None:
        return f"{_number(low)} to {_number(high)}"
    return "true | false" if field.annotation is bool else ""


def _number(value: object) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _comment(text: str) -> list[str]:
    return textwrap.wrap(
        text, WIDTH - 2, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False, break_long_words=False
    )


def render_env_example() -> str:
    lines = [ENV_HEADER]
    for title, note, fields in sections():
        lines.append(f"# ---- {title} ".ljust(WIDTH - 4, "-"))
        for field in fields:
            limits = allowed(field)
            text = f"{field.description}" + (f" Allowed: {limits}." if limits else "")
            lines += _comment(text)
            name = field.validation_alias
            lines.append(f"{name}={field.examples[0]}" if field.examples else f"# {name}={default_of(field)}")
        lines += [*_comment(note), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def render_markdown() -> str:
    parts = [MD_HEADER]
    for title, note, fields in sections():
        parts.append(f"\n## {title[0].upper()}{title[1:]}\n")
        if note:
            parts.append(f"\n{note}\n")
        parts.append("\n| variable | default | allowed | meaning |\n|---|---|---|---|\n")
        for field in fields:
            default = "**required**" if field.is_required() else f"`{default_of(field)}`" if default_of(field) else ""
            cells = [f"`{field.validation_alias}`", default, allowed(field), str(field.description)]
            parts.append("| " + " | ".join(cell.replace("|", "\\|").replace("<", "&lt;") for cell in cells) + " |\n")
    return "".join(parts)


OUTPUTS = {ROOT / ".env.example": render_env_example, ROOT / "docs" / "configuration.md": render_markdown}


def main(argv: list[str]) -> int:
    stale = [path for path, render in OUTPUTS.items() if not path.exists() or path.read_text() != render()]
    if "--check" in argv:
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (run python -m common.settings.docs)", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(OUTPUTS[path]())
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
