"""Value kinds several settings share: comma-separated lists, choices, URLs, origins, directories.

Each validator raises ValueError worded to follow the variable's name (see base._describe); a
value holding a password is never part of a message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, GetCoreSchemaHandler, Secret, SecretStr
from pydantic_core import CoreSchema, core_schema


def split_csv(value: Any) -> Any:
    """ "a, b,,c" -> ("a", "b", "c"); defaults (already tuples) pass through."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


@dataclass(frozen=True)
class OneOf:
    """A choice, matched case-insensitively; the docs generator lists `values` as what is allowed."""

    values: tuple[str, ...]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_before_validator_function(self._check, handler(source))

    def _check(self, value: Any) -> Any:
        if not isinstance(value, str):
            return value  # None: "not set", for choices whose default depends on other settings
        lowered = value.lower()
        if lowered not in self.values:
            raise ValueError(f"must be one of {', '.join(self.values)}, got {lowered!r}")
        return lowered


def _http_url(value: Any) -> Any:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        if "@" in str(value):  # user:password@host, however malformed the rest
            raise ValueError("must be an http:// or https:// URL with a host (value not shown: it holds credentials)")
        raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
    return value.rstrip("/")


def _http_urls(value: Any) -> Any:
    """A comma-separated list of http(s) URLs, each checked like HttpUrl, duplicates refused."""
    urls = tuple(_http_url(item) for item in split_csv(value))
    if len(set(urls)) != len(urls):
        raise ValueError("names one URL twice")
    return urls


def _origins(value: Any) -> Any:
    """Exact origins (scheme://host[:port]), normalised and deduplicated.

    Wildcards are refused on purpose: an allow-list is the point, and a typo must fail at start-up
    rather than silently open (or close) the service to every page on the web.
    """
    origins: list[str] = []
    wrong: list[str] = []
    for raw in split_csv(value):
        parts = urlsplit(raw.rstrip("/"))
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.fragment
            or parts.username
        ):
            wrong.append(f": {raw!r} is not an origin like https://chat.example.com or http://127.0.0.1:5173")
        else:
            origins.append(f"{parts.scheme}://{parts.netloc.lower()}")
    if wrong:
        raise ValueError("\n".join(wrong))
    return tuple(dict.fromkeys(origins))


def _postgres(value: SecretStr) -> SecretStr:
    if urlsplit(value.get_secret_value()).scheme not in ("postgres", "postgresql"):
        raise ValueError("must be a postgresql:// URL (value not shown: it may hold a password)")
    return value


_creating_directories: ContextVar[bool] = ContextVar("creating_directories", default=True)


@contextlib.contextmanager
def directories_untouched() -> Iterator[None]:
    """Settings loaded in this block create no directory and write no probe: a command that only
    inspects storage (`retina maintenance`) must find a mistyped or unmounted IMAGE_STORAGE_PATH
    missing, not create an empty one and take it for the real thing. The command checks the path."""
    token = _creating_directories.set(False)
    try:
        yield
    finally:
        _creating_directories.reset(token)


def _writable(path: Path) -> Path:
    """A directory the service will write into: created if missing, and probed for writing
    (neither inside `directories_untouched`)."""
    path = path.expanduser()
    if not _creating_directories.get():
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"({path}) is not a writable directory: {exc.strerror or exc}") from None
    return path


def _directory(path: Path) -> Path:
    if not path.is_dir():
        raise ValueError(f"({path}) is not a directory")
    return path


Csv = Annotated[tuple[str, ...], BeforeValidator(split_csv)]
SecretCsv = Annotated[Secret[tuple[str, ...]], BeforeValidator(split_csv)]
HttpUrl = Annotated[str, BeforeValidator(_http_url)]
HttpUrls = Annotated[tuple[str, ...], BeforeValidator(_http_urls)]
Origins = Annotated[tuple[str, ...], BeforeValidator(_origins)]
PostgresUrl = Annotated[SecretStr, AfterValidator(_postgres)]
WritableDirectory = Annotated[Path, AfterValidator(_writable)]
Directory = Annotated[Path, AfterValidator(_directory)]
