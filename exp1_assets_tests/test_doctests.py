"""The small examples in the library's docstrings are tests too (TRL style)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import exp1_assets

LIBRARY = sorted(  # every module but the Dagster layer's
    m.name for m in pkgutil.walk_packages(exp1_assets.__path__, "exp1_assets.")
    if m.name.split(".")[1] not in ("defs", "definitions")
)


def test_there_are_doctests() -> None:
    found = sum(len(doctest.DocTestFinder().find(importlib.import_module(name))) for name in LIBRARY)
    assert found > 5


@pytest.mark.parametrize("name", LIBRARY)
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
