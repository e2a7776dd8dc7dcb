"""Reading typed values from environment variables, collecting every problem at once.

Start-up must report all configuration mistakes in one go (an operator fixing them one restart at
a time is the failure mode this prevents), so readers never raise: they record a problem and
return a placeholder, and the caller raises :class:`SettingsError` once at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")
# Range checks compare against int or float bounds, so only those two value types are allowed.
Number = TypeVar("Number", int, float)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(Exception):
    """Raised with every configuration problem found; each entry is one plain-English line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class EnvReader:
    """Typed access to an environment mapping that remembers problems instead of raising."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.problems: list[str] = []
        self.names_read: set[str] = set()

    def _raw(self, name: str) -> str | None:
        self.names_read.add(name)
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def raise_if_problems(self) -> None:
        if self.problems:
            raise SettingsError(list(self.problems))

    def _parse(self, name: str, default: T, parse: Callable[[str], T], kind: str) -> T:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            return parse(raw)
        except ValueError:
            self.problem(f"{name} must be {kind}, got {raw!r}")
            return default

    def string(self, name: str, default: str) -> str:
        raw = self._raw(name)
        return default if raw is None else raw

    def boolean(self, name: str, default: bool) -> bool:
        def parse(raw: str) -> bool:
            lowered = raw.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(raw)

        return self._parse(name, default, parse, "true or false")

    def integer(self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self._parse(name, default, int, "a whole number")
        return self._check_range(name, value, default, minimum, maximum)

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        value = self._parse(name, default, float, "a number")
        return self._check_range(name, value, default, minimum, maximum)

    def _check_range(
        self,
        name: str,
        value: Number,
        default: Number,
        minimum: float | None,
        maximum: float | None,
    ) -> Number:
        if minimum is not None and value < minimum:
            self.problem(f"{name} must be at least {minimum}, got {value}")
            return default
        if maximum is not None and value > maximum:
            self.problem(f"{name} must be at most {maximum}, got {value}")
            return default
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, default).lower()
        if value not in choices:
            self.problem(f"{name} must be one of {', '.join(choices)}, got {value!r}")
            return default
        return value

    def csv(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self._raw(name)
        if raw is None:
            return default
        return tuple(item.strip() for item in raw.split(",") if item.strip())

    def http_url(self, name: str, default: str) -> str:
        value = self.string(name, default)
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problem(f"{name} must be an http:// or https:// URL with a host, got {value!r}")
        return value.rstrip("/")

    def database_url(self, name: str, *, required: bool = True) -> str:
        """A PostgreSQL URL; the value may hold a password, so it is never echoed back."""
        raw = self._raw(name)
        if raw is None:
            if required:
                self.problem(f"{name} is required (postgresql://user:password@host:port/database) but is not set")
            return ""
        if urlsplit(raw).scheme not in ("postgres", "postgresql"):
            self.problem(f"{name} must be a postgresql:// URL (value not shown: it may hold a password)")
        return raw

    def writable_directory(self, name: str, default: str) -> Path:
        """A directory the service will write into: created if missing, and probed for writing."""
        path = Path(self.string(name, default)).expanduser()
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            self.problem(f"{name} ({path}) is not a writable directory: {exc.strerror or exc}")
        return path
