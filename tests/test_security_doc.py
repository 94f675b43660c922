"""docs/security.md names a test for every claim: each name it gives must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "security.md"


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test")}


def test_every_test_named_in_the_security_model_exists() -> None:
    text = DOC.read_text()
    named = 0
    for cell in re.findall(r"`([^`]+)`", text):
        # `dir/test_x.py::test_a`, then `::test_b` continuing the same file
        m = re.fullmatch(r"([\w/]+\.py)(?:::(\w+))?", cell)
        if m is None:
            continue
        path = ROOT / "tests" / m.group(1)
        if not path.exists():
            path = ROOT / m.group(1)
        assert path.exists(), f"docs/security.md names {cell}, which does not exist"
        if m.group(2):
            assert m.group(2) in _tests_in(path), f"docs/security.md names {cell}: no such test"
            named += 1
    # continuation names (`::test_b`) refer to the file named just before them in the same cell
    for row in text.splitlines():
        current: Path | None = None
        for cell in re.findall(r"`([^`]+)`", row):
            m = re.fullmatch(r"([\w/]+\.py)(?:::\w+)?", cell)
            if m is not None:
                current = ROOT / "tests" / m.group(1)
                continue
            c = re.fullmatch(r"::(\w+)", cell)
            if c is not None:
                assert current is not None, f"{cell} follows no file in: {row[:80]}"
                assert c.group(1) in _tests_in(current), f"docs/security.md: {current.name}{cell}"
                named += 1
    assert named >= 40
