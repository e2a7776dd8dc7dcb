"""The settings machinery: pydantic-settings models read from one environment mapping, and every
problem found reported at once as plain one-line sentences.

Start-up must report all configuration mistakes in one go (an operator fixing them one restart at
a time is the failure mode this prevents). Pydantic already collects every field error; what it
cannot do is run a model validator (a rule across fields) once any field failed. So cross-field
rules live on small group models (each holding a rule and only the fields it needs), the service
settings inherit the groups, and when the service model fails :func:`load` validates each group on
its own too, so a rule whose inputs are fine is still reported next to unrelated field errors.

Messages name the variable, never echo a secret, and are worded for an operator, not as pydantic's
defaults ("Input should be a valid integer"); :func:`_describe` maps pydantic's error types.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import Field, ValidationError
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticUndefined
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

M = TypeVar("M", bound="EnvSettings")


class SettingsError(Exception):
    """Raised with every configuration problem found; each entry is one plain-English line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class EnvSettings(BaseSettings):
    """Base of every settings model: exact variable names, values read as plain strings.

    `enable_decoding=False`: lists are comma-separated (what .env.example and the manifests use),
    never JSON. `frozen`: settings are read once at start-up and shared by every request.
    """

    model_config = SettingsConfigDict(case_sensitive=True, frozen=True, extra="ignore", enable_decoding=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments only, should a model ever be built directly: the process environment
        must never leak in behind the mapping given (:func:`load` validates that mapping itself)."""
        return (init_settings,)


def setting(
    name: str,
    default: Any = PydanticUndefined,
    *,
    doc: str,
    required: str | None = None,
    example: str | None = None,
    shown: str | None = None,
    ge: float | None = None,
    le: float | None = None,
) -> Any:
    """A field read from variable `name`, documented by `doc` (the source of .env.example and
    docs/configuration.md). `required` is the hint printed when a required variable is missing,
    `example` the placeholder .env.example gives it, `shown` the default as documented when the
    real one is computed (a path of the source tree, or a value derived from other settings)."""
    extra: JsonDict = {key: value for key, value in (("required", required), ("shown", shown)) if value is not None}
    return Field(
        default,
        validation_alias=name,
        description=doc,
        examples=[example] if example is not None else None,
        json_schema_extra=extra or None,
        ge=ge,
        le=le,
    )


def load(model: type[M], environ: Mapping[str, str]) -> M:
    """Validate `model` from `environ`, or raise SettingsError naming every problem."""
    try:
        return model.model_validate(_given(model, environ))
    except ValidationError as exc:
        problems = _problems(model, exc)
    for group in model.__mro__[1:]:
        if isinstance(group, type) and issubclass(group, EnvSettings) and group is not EnvSettings:
            try:
                group.model_validate(_given(group, environ))
            except ValidationError as exc:
                problems += _problems(group, exc, rules_only=True)
    # Raised outside the except blocks on purpose: no ValidationError is chained to it, since
    # pydantic's own error text quotes inputs, which may be secrets.
    raise SettingsError(list(dict.fromkeys(problems)))


def _given(model: type[EnvSettings], environ: Mapping[str, str]) -> dict[str, str]:
    """The variables `model` reads, found in `environ` by their exact names (each field's
    validation alias, see :func:`setting`), stripped; blank ones count as unset. Values stay the
    strings they were (no JSON decoding, as `enable_decoding=False` says): the fields' own
    validators parse lists and choices. Nothing else reaches the model, os.environ least of all,
    so tests and `retina up` (which adds defaults to a copy) load exactly what they pass."""
    names = {str(field.validation_alias) for field in model.model_fields.values()}
    return {name: value.strip() for name, value in environ.items() if name in names and value.strip()}


def _problems(model: type[EnvSettings], exc: ValidationError, *, rules_only: bool = False) -> list[str]:
    fields = {str(field.validation_alias): field for field in model.model_fields.values()}
    problems: list[str] = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        if rules_only and name:
            continue
        problems += _describe(name, fields.get(name), error)
    return problems


def _describe(name: str, field: FieldInfo | None, error: ErrorDetails) -> list[str]:
    """One line per problem, starting with the variable's name. Inputs are quoted only for
    number, flag and range errors, which no secret field can produce."""
    kind, given = error["type"], error.get("input")
    ctx = error.get("ctx", {})
    if kind == "missing":
        extra = field.json_schema_extra if field is not None else None
        hint = extra.get("required", "") if isinstance(extra, dict) else ""
        return [f"{name} is required ({hint}) but is not set" if hint else f"{name} is required but is not set"]
    if kind in ("int_parsing", "int_from_float"):
        text = f" must be a whole number, got {given!r}"
    elif kind == "float_parsing":
        text = f" must be a number, got {given!r}"
    elif kind == "bool_parsing":
        text = f" must be true or false, got {given!r}"
    elif kind == "greater_than_equal":
        text = f" must be at least {ctx['ge']}, got {given}"
    elif kind == "less_than_equal":
        text = f" must be at most {ctx['le']}, got {given}"
    elif kind in ("value_error", "assertion_error"):
        # Rules raise ValueError worded to follow the name: " must ...", ": key 2 ...", or a whole
        # sentence (model rules, no name). One line per problem.
        return [f"{name}{_spaced(line)}" if name else line for line in str(ctx.get("error", "")).splitlines()]
    else:
        text = f": {error['msg']}"
    return [f"{name}{text}"]


def _spaced(line: str) -> str:
    return line if line.startswith(":") else f" {line}"
