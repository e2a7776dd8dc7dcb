"""common/errors.py is the one list of error codes: each code is declared by one class, there."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import services
from common import errors
from common.errors import ApiError


def _every_subclass(cls: type[ApiError]) -> list[type[ApiError]]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_every_subclass(sub)]
    return found


def _import_every_service_module() -> None:
    for module in pkgutil.walk_packages(services.__path__, "services."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)


def test_every_code_is_declared_once_in_common_errors() -> None:
    _import_every_service_module()
    declaring = [cls for cls in _every_subclass(ApiError) if "code" in vars(cls)]
    elsewhere = [f"{cls.__module__}.{cls.__qualname__}" for cls in declaring if cls.__module__ != errors.__name__]
    assert elsewhere == [], "error codes belong in common/errors.py"
    codes = [cls.code for cls in declaring]
    assert sorted(codes) == sorted(set(codes)), "one class per code"
    for cls in declaring:
        assert {"status", "outcome"} <= set(vars(cls)), f"{cls.__name__} states its status and outcome"


def test_the_module_docstring_draws_every_class() -> None:
    classes = [cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, ApiError)]
    doc = errors.__doc__ or ""
    for cls in classes:
        line = next((line for line in doc.splitlines() if re.search(rf"\b{cls.__name__}\b", line)), None)
        assert line is not None, f"{cls.__name__} is missing from the tree"
        if "code" in vars(cls):
            assert f"{cls.status} {cls.code}" in line, line
            assert line.rstrip().endswith(cls.outcome), line
        assert cls.__doc__, f"{cls.__name__} has a docstring"
        assert "\n" not in cls.__doc__.strip(), f"{cls.__name__}'s docstring is one line"
