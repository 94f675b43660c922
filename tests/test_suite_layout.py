"""The test suite's own layout: shared helpers live in helpers modules, never in test modules
or conftest.py, so no test module imports another and conftest.py holds fixtures and hooks."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent

# Imports of test modules that are allowed, each as (importing file, imported module): none.
# Shared helpers go in the directory's helpers.py, shared fixtures in its conftest.py.
KNOWN: frozenset[tuple[str, str]] = frozenset()


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.rsplit(".", 1)[-1])
        elif isinstance(node, ast.Import):
            names.update(alias.name.rsplit(".", 1)[-1] for alias in node.names)
    return names


def test_no_test_module_or_conftest_is_imported() -> None:
    found = {
        (path.relative_to(TESTS).as_posix(), name)
        for path in TESTS.rglob("*.py")
        for name in _imported_modules(path)
        if name == "conftest" or name.startswith("test_")
    }
    assert found == KNOWN, f"new: {sorted(found - KNOWN)}; fixed, drop: {sorted(KNOWN - found)}"
