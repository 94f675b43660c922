"""Offline sub-commands: identity, trust and org certificates."""

from __future__ import annotations

import argparse
from typing import Any

from meshguard import __version__


def _version(args: argparse.Namespace) -> int:
    print(f"meshguard {__version__}")
    return 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=_version)
