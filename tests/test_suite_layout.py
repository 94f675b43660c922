"""The test suite's own layout: shared helpers live in helpers modules, never in test modules
or conftest.py, so no test module imports another and conftest.py holds fixtures and hooks."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent

# Imports of test modules that remain, in directories whose tests are being rewritten
# elsewhere; each entry is (importing file, imported module). Move the helpers to the
# directory's helpers.py and delete the entry.
KNOWN: frozenset[tuple[str, str]] = frozenset({
    ("nat/test_holepunch_attacks.py", "test_holepunch"),
    ("nat/test_relay_attacks.py", "test_relay"),
})


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
