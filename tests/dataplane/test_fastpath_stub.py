"""The C extension's stub (_fastpath.pyi, which mypy reads) names what the built module has."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from meshguard.dataplane import _fastpath, fastpath

STUB = Path(fastpath.__file__).with_name("_fastpath.pyi")


def _stub() -> tuple[set[str], dict[str, set[str]]]:
    tree = ast.parse(STUB.read_text())
    names: set[str] = set()
    members: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            found: set[str] = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    found.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    found.add(item.target.id)
            members[node.name] = found
    return {n for n in names if not n.startswith("_")}, members


def _public(obj: object) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_")}


def test_stub_names_what_the_module_has() -> None:
    names, members = _stub()
    assert names == _public(_fastpath)
    for cls, found in members.items():
        assert {n for n in found if not n.startswith("_")} == _public(getattr(_fastpath, cls)), cls


def test_stub_keywords_are_the_module_s() -> None:
    """Functions that take keywords (their docstrings say `name(a, b=...)`) have those
    parameter names in the stub; the others are positional-only there."""
    tree = ast.parse(STUB.read_text())
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        doc = inspect.getdoc(getattr(_fastpath, node.name)) or ""
        declared = [p.split("=")[0].strip() for p in doc[doc.index("(") + 1 : doc.index(")")]
                    .split(",")]
        if node.args.posonlyargs:
            assert not node.args.args, node.name
            assert len(node.args.posonlyargs) == len(declared), node.name
        else:
            assert [a.arg for a in node.args.args] == declared, node.name
