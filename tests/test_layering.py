"""The layering (docs/architecture.md#layers): cores never do I/O, and imports point down only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "meshguard"

# Sans-IO cores and pure layers: no sockets, event loops, clocks, OS randomness or threads.
SANS_IO = ["wire", "wireguard", "swim", "nat", "identity", "dns", "mesh", "crypto", "discovery",
            "policy"]
FORBIDDEN_IO = {"asyncio", "socket", "time", "select", "selectors", "threading", "subprocess"}
# `os` is forbidden in protocol cores; identity/ owns key files, so it alone may touch the disk
# (through its store module), and crypto/ may not; policy/ reads the `services/` files and keeps
# the newest signed policies.
OS_ALLOWED = {"identity", "policy"}

# Which top-level packages each layer may import (beside itself and the shared leaf modules).
LEAF = {"errors", "clock", "rng", "config", "sansio", "__init__"}
ALLOWED = {
    "crypto": set(),
    "wire": set(),
    "wireguard": {"crypto", "wire"},
    "swim": {"crypto", "wire"},
    "nat": {"crypto", "wire"},
    "identity": {"crypto", "wire"},
    "dns": {"crypto", "wire", "identity"},
    "policy": {"crypto", "wire", "identity"},
    "mesh": {"crypto", "wire", "wireguard", "swim", "nat", "identity", "dns", "policy"},
    "dataplane": {"crypto", "wire", "wireguard", "policy"},
    "discovery": {"wire", "nat"},
    "web": set(),  # the page and its routes: nothing of the mesh but the status it is handed
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(pkg: str) -> list[Path]:
    return sorted((SRC / pkg).rglob("*.py"))


@pytest.mark.parametrize("pkg", SANS_IO)
def test_cores_do_no_io(pkg: str) -> None:
    for f in _files(pkg):
        for name in _imports(f):
            top = name.split(".")[0]
            assert top not in FORBIDDEN_IO, f"{f.relative_to(SRC)} imports {name}"
            if top == "os" and pkg not in OS_ALLOWED:
                raise AssertionError(f"{f.relative_to(SRC)} imports os")


@pytest.mark.parametrize("pkg", sorted(ALLOWED))
def test_imports_point_down(pkg: str) -> None:
    for f in _files(pkg):
        for name in _imports(f):
            parts = name.split(".")
            if parts[0] != "meshguard" or len(parts) < 2:
                continue
            target = parts[1]
            if target == pkg or target in LEAF:
                continue
            assert target in ALLOWED[pkg], f"{f.relative_to(SRC)} imports {name}"


def test_only_crypto_imports_crypto_libraries() -> None:
    for f in SRC.rglob("*.py"):
        if f.is_relative_to(SRC / "crypto"):
            continue
        for name in _imports(f):
            top = name.split(".")[0]
            assert top not in {"cryptography", "blake3", "hashlib", "hmac"}, (
                f"{f.relative_to(SRC)} imports {name}"
            )
