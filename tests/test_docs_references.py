"""Every document the code cites is in the repository, under docs/, and says what is cited.

A citation is `docs/<file>.md`, optionally with `#<anchor>`: the file must exist and, with an
anchor, have a heading whose GitHub-style slug is the anchor. Design notes that never were in
the repository must not be cited at all.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["src", "tests", "bench", "docs", "contrib", ".ci", "README.md", "dev"]
TEXT_SUFFIXES = {".py", ".pyi", ".c", ".h", ".md", ".json", ".toml", ".txt", ".sh", ".service",
                 ".cfg", ".ini", ""}

# Documents outside the repository. Each pattern is written so that it does not match itself,
# which keeps this file out of a plain grep for those names.
OUTSIDE = [
    re.compile(r"SPEC[-]NOTES"),
    re.compile(r"contracts[.]md"),
    re.compile(r"NAT[-]LAB"),
    re.compile(r"ARCHITECTURE[.]md"),
    re.compile(r"PERF[.]md"),
    re.compile(r"[.][.]/shared\b"),
    re.compile(r"/work[/]shared"),
    re.compile(r"meshguard[-]README"),
    re.compile(r"seed[/]fixtures"),
]

CITATION = re.compile(r"\bdocs/([\w./-]+?\.md)(?:#([\w-]+))?")

# What docs name in backticks: a file (`mesh/demux.py`, `identity/test_store.py::test_x`) and
# continuations (`::test_y`) naming another function of the file named before in the same
# line or list item.
NAMED_FILE = re.compile(r"`([\w./-]+\.(?:py|pyi|c|json))(?:::(\w+))?`|`::(\w+)`")
# A docs path is relative to one of these (src/meshguard for modules, tests for tests).
ROOTS = [ROOT, ROOT / "tests", ROOT / "src" / "meshguard", ROOT / "src"]


def _files() -> list[Path]:
    out: list[Path] = []
    for name in SCANNED:
        top = ROOT / name
        paths = [top] if top.is_file() else sorted(top.rglob("*")) if top.is_dir() else []
        for p in paths:
            if not p.is_file() or "__pycache__" in p.parts or p.suffix not in TEXT_SUFFIXES:
                continue
            out.append(p)
    return out


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    found: set[str] = set()
    fenced = False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*)", line)):
            found.add(slug(m.group(1)))
    return found


def test_slug_follows_github() -> None:
    assert slug("The demux rule") == "the-demux-rule"
    assert slug("`node.cert` (version 1)") == "nodecert-version-1"
    assert slug("Join, JoinAck") == "join-joinack"


def test_nothing_cites_a_document_outside_the_repository() -> None:
    bad: list[str] = []
    for path in _files():
        text = _text(path)
        if text is None:
            continue
        rel = path.relative_to(ROOT).as_posix()
        for pattern in OUTSIDE:
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                bad.append(f"{rel}:{line}: {m.group(0)}")
    assert not bad, "cite docs/ instead:\n" + "\n".join(bad)


def test_every_cited_doc_and_anchor_exists() -> None:
    cited = 0
    bad: list[str] = []
    cache: dict[Path, set[str]] = {}
    for path in _files():
        text = _text(path)
        if text is None:
            continue
        rel = path.relative_to(ROOT).as_posix()
        for m in CITATION.finditer(text):
            cited += 1
            doc = ROOT / "docs" / m.group(1)
            line = text.count("\n", 0, m.start()) + 1
            if not doc.is_file():
                bad.append(f"{rel}:{line}: {m.group(0)} (no such file)")
                continue
            if m.group(2) is not None:
                if doc not in cache:
                    cache[doc] = anchors(doc)
                if m.group(2) not in cache[doc]:
                    bad.append(f"{rel}:{line}: {m.group(0)} (no such heading)")
    assert not bad, "\n".join(bad)
    assert cited >= 20


@pytest.mark.parametrize("name", ["architecture.md", "wire-format.md", "compatibility.md"])
def test_the_core_docs_exist(name: str) -> None:
    assert (ROOT / "docs" / name).is_file()


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}


def test_every_file_and_test_a_doc_names_exists() -> None:
    named = 0
    bad: list[str] = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        current: Path | None = None
        for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            where = f"docs/{doc.name}:{number}"
            if not line.startswith("  "):  # a continuation line of a list item keeps the file
                current = None
            for m in NAMED_FILE.finditer(line):
                if m.group(1) is not None:
                    rel = m.group(1)
                    found = [r / rel for r in ROOTS if (r / rel).is_file()]
                    current = found[0] if found else None
                    if current is None:
                        bad.append(f"{where}: {rel} (no such file)")
                    name = m.group(2)
                else:
                    name = m.group(3)
                    if current is None:
                        bad.append(f"{where}: ::{name} follows no file")
                        continue
                named += 1
                if (name is not None and current is not None and current.suffix == ".py"
                        and name not in _defined(current)):
                    bad.append(f"{where}: {current.relative_to(ROOT)}::{name} (not defined)")
    assert not bad, "\n".join(bad)
    assert named >= 50
