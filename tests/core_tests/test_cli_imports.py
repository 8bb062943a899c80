"""The ``autoprune`` command imports only the public API plus its own parser and printing.

The public API: the package ``autoprune``'s ``__all__`` (its names load lazily) and the
``__all__`` of its public subpackages. Every import of an ``autoprune`` module in ``cli.py``,
``cli_parser.py`` and ``cli_print.py`` (at the top or inside a function) must name one of
these modules, and every name it takes must be in that module's ``__all__``.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import autoprune

PUBLIC = ("autoprune", "autoprune.study", "autoprune.runtimes", "autoprune.sparsity", "autoprune.models",
          "autoprune.data", "autoprune.tracking", "autoprune.report", "autoprune.progress", "autoprune.errors",
          "autoprune.deploy")
OWN_HELPERS = ("autoprune.cli_parser", "autoprune.cli_print")
CLI_MODULES = ("cli.py", "cli_parser.py", "cli_print.py")


def import_problems(source: str, exports: dict[str, set[str]]) -> list[str]:
    """What in ``source`` imports from autoprune outside ``exports`` (module -> its ``__all__``)."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "autoprune" and alias.name not in exports:
                    problems.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            if node.module.split(".")[0] != "autoprune":
                continue
            if node.module not in exports:
                problems.append(f"line {node.lineno}: from {node.module} import ...")
                continue
            problems += [f"line {node.lineno}: from {node.module} import {alias.name} (not in its __all__)"
                         for alias in node.names if alias.name not in exports[node.module]]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            problems.append(f"line {node.lineno}: a relative import")
    return problems


@pytest.fixture(scope="module")
def exports() -> dict[str, set[str]]:
    return {name: set(importlib.import_module(name).__all__) for name in (*PUBLIC, *OWN_HELPERS)}


@pytest.mark.parametrize("name", CLI_MODULES)
def test_the_cli_imports_only_the_public_api(name: str, exports: dict[str, set[str]]) -> None:
    source = (Path(autoprune.__file__).parent / name).read_text()
    assert import_problems(source, exports) == []


def test_the_check_finds_an_internal_import(exports: dict[str, set[str]]) -> None:
    source = ("from autoprune.pipeline import run_prune\nfrom autoprune import _LAZY\nimport autoprune.atomic\n"
              "def f():\n    from autoprune.study.records import study_record\n")
    assert len(import_problems(source, exports)) == 4


def test_every_public_name_loads(exports: dict[str, set[str]]) -> None:
    for module, names in exports.items():
        mod = importlib.import_module(module)
        assert all(hasattr(mod, n) for n in names), module
