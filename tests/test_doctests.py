"""The examples in the docstrings of every fedgenome module run and print what they say."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import fedgenome


def _modules() -> list[str]:
    names = [info.name for info in pkgutil.iter_modules(fedgenome.__path__, "fedgenome.")]
    for sub in fedgenome.MAPPED:  # mapped folders: an editable install does not list them
        package = importlib.import_module(f"fedgenome.{sub}")
        names += [package.__name__] + [info.name for info in
                                       pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]
    return sorted(name for name in set(names) if not name.endswith("__main__"))


MODULES = _modules()


def test_every_package_of_the_design_is_walked_and_has_examples() -> None:
    packages = {name.split(".")[1] for name in MODULES if name.count(".") >= 1}
    assert {"server", "client", "shared", "privacy", "configs", "models", "audit"} <= packages
    finder = doctest.DocTestFinder()
    examples = sum(len(test.examples) for name in MODULES
                   for test in finder.find(importlib.import_module(name)))
    assert examples >= 10, f"only {examples} docstring examples found: is the walk missing modules?"


@pytest.mark.parametrize("name", MODULES)
def test_the_docstring_examples_of(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
