"""`.env.example` and docs/configuration.md rendered from settings models the caller names.

The models' Field descriptions, defaults and limits are the single source. This module only
renders: which models to document, in what order, is given by the entry point
(`python -m cli.settings_docs`), so common/ never imports a service.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import annotated_types
from pydantic.fields import FieldInfo

from common.settings.base import EnvSettings
from common.settings.kinds import OneOf

# Settings groups in documentation order; each contributes the fields it declares itself.
Groups = Sequence[type[EnvSettings]]
WIDTH = 100

ENV_HEADER = """\
# retina configuration. Every variable, its default and its meaning.
# Generated from the settings models by `{command}`: edit the models, not this file.
# Lines starting with "# NAME=" show the default and may be left unset; uncommented ones are required.
# `retina up` fills in DATABASE_URL (embedded PostgreSQL), SERVICE_TOKENS and IMAGE_SIGNING_KEYS for you.
"""

MD_HEADER = """\
# Configuration

<!-- Generated from the settings models by `{command}`: edit the models, not this file. -->

Both services read environment variables only, validated at start-up: every problem is reported
at once, one line each, and the process exits with status 2 (secrets are never printed).
[`.env.example`](../.env.example) lists the same variables as a file to copy.
"""


def undocumented(groups: Groups, models: Sequence[type[EnvSettings]]) -> set[str]:
    """Variables one of `models` reads that none of `groups` declares."""
    documented = {str(field.validation_alias) for group in groups for field in _own_fields(group)}
    return {str(field.validation_alias) for model in models for field in model.model_fields.values()} - documented


def _own_fields(group: type[EnvSettings]) -> list[FieldInfo]:
    return [field for name, field in group.model_fields.items() if name in vars(group).get("__annotations__", {})]


def sections(groups: Groups) -> Iterator[tuple[str, str, list[FieldInfo]]]:
    """(title, note, fields) in documentation order; fields of groups sharing a title merge."""
    order: dict[str, tuple[str, list[FieldInfo]]] = {}
    for group in groups:
        title = str(getattr(group, "section", ""))
        note, fields = order.setdefault(title, ("", []))
        order[title] = (note or str(vars(group).get("note", "")), fields + _own_fields(group))
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


def render_env_example(groups: Groups, command: str) -> str:
    """`.env.example`; `command` is how to regenerate it, named in its header."""
    lines = [ENV_HEADER.format(command=command)]
    for title, note, fields in sections(groups):
        lines.append(f"# ---- {title} ".ljust(WIDTH - 4, "-"))
        for field in fields:
            limits = allowed(field)
            text = f"{field.description}" + (f" Allowed: {limits}." if limits else "")
            lines += _comment(text)
            name = field.validation_alias
            lines.append(f"{name}={field.examples[0]}" if field.examples else f"# {name}={default_of(field)}")
        lines += [*_comment(note), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def render_markdown(groups: Groups, command: str) -> str:
    """docs/configuration.md; `command` is how to regenerate it, named in its header."""
    parts = [MD_HEADER.format(command=command)]
    for title, note, fields in sections(groups):
        parts.append(f"\n## {title[0].upper()}{title[1:]}\n")
        if note:
            parts.append(f"\n{note}\n")
        parts.append("\n| variable | default | allowed | meaning |\n|---|---|---|---|\n")
        for field in fields:
            default = "**required**" if field.is_required() else f"`{default_of(field)}`" if default_of(field) else ""
            cells = [f"`{field.validation_alias}`", default, allowed(field), str(field.description)]
            parts.append("| " + " | ".join(cell.replace("|", "\\|").replace("<", "&lt;") for cell in cells) + " |\n")
    return "".join(parts)


def write_or_check(outputs: Mapping[Path, Callable[[], str]], root: Path, argv: Sequence[str], command: str) -> int:
    """Rewrite the stale files of `outputs`; with `--check`, write nothing and exit 1 if any is stale."""
    stale = [path for path, render in outputs.items() if not path.exists() or path.read_text() != render()]
    if "--check" in argv:
        for path in stale:
            print(f"stale: {path.relative_to(root)} (run {command})", file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.write_text(outputs[path]())
        print(f"wrote {path.relative_to(root)}")
    return 0
