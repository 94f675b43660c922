"""The files generated from the argument parser and committed: man page, shell completions.

    python -m meshguard.cli.generated_files [--check] [ROOT]      # ./dev man

writes (or with --check, compares) man/meshguard.8 and completions/ under ROOT (default: the
current directory); tests/test_packaging.py fails when a committed one is stale. setup.py
installs them into share/man/man8, share/bash-completion/completions and
share/zsh/site-functions. The man page is in section 8 (system administration: the daemon
needs CAP_NET_ADMIN), as contrib/meshguard.service's `Documentation=man:meshguard(8)` says.

The man page needs argparse-manpage (the dev extra); the completions need shtab, which the
running `meshguard completion` needs too. Both render with a fixed width and no date, so the
output depends only on the parser (and on the Python and tool versions that format it).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from meshguard import __version__

MAN_SECTION = "8"
MAN_PAGE = Path("man", f"meshguard.{MAN_SECTION}")
WIDTH = 80


@contextmanager
def _fixed_width() -> Iterator[None]:
    """argparse wraps help text at $COLUMNS (else the terminal's width): fix it to WIDTH."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH)
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


# sections after the commands' (roff)
_SECTIONS = (
    ("environment", ".TP\n.B MESHGUARD_CONFIG_DIR\nthe configuration directory (identity, "
     "trust, policies); default /etc/meshguard as root, else $XDG_CONFIG_HOME/meshguard or "
     "~/.config/meshguard\n.TP\n.B MESHGUARD_PURE_PYTHON=1\nuse the pure Python data plane "
     "even where the C one is built (\\fBmeshguard version\\fR says which is in use)"),
    ("files", ".TP\n.B /etc/meshguard/\nidentity, WireGuard key, authorized_keys/, "
     "trusted_orgs/, services/, policies/\n.TP\n.B /run/meshguard/IFACE.sock\nthe running "
     "daemon's control socket (status, down, ping)"),
    ("see also", "\\fBwg\\fR(8), \\fBsystemd.service\\fR(5); the project's README.md and "
     "docs/"),
)


def render_man_page() -> str:
    """man/meshguard.8: every sub-command of cli.main.build_parser with its options."""
    from argparse_manpage.manpage import Manpage

    from meshguard.cli.main import build_parser

    with _fixed_width():
        page = Manpage(build_parser(), _data={
            "project_name": "meshguard", "version": __version__, "manual_section": MAN_SECTION,
            "manual_title": "System Administration",
            "description": "decentralized, serverless, WireGuard-compatible mesh VPN daemon",
        })
        page.date = ""  # no build date: the page changes only when the parser does
        for heading, text in _SECTIONS:
            page.add_section(heading, "=", text)
        return str(page)


def _completion(shell: str) -> Callable[[], str]:
    def render() -> str:
        from meshguard.cli.completion_command import completion_script

        with _fixed_width():
            return completion_script(shell)
    return render


# path under the source root -> what renders it
GENERATED: dict[Path, Callable[[], str]] = {
    MAN_PAGE: render_man_page,
    Path("completions", "meshguard"): _completion("bash"),
    Path("completions", "_meshguard"): _completion("zsh"),
}


def stale(root: Path) -> list[Path]:
    """The generated files under `root` that differ from what the parser renders now."""
    out = []
    for rel, render in GENERATED.items():
        path = root / rel
        if not path.exists() or path.read_text() != render():
            out.append(rel)
    return out


def write(root: Path) -> list[Path]:
    """Renders every generated file under `root`; returns those that changed."""
    from meshguard.identity.store import write_file

    changed = stale(root)
    for rel in changed:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_file(root / rel, GENERATED[rel]().encode())
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshguard.cli.generated_files",
                                     description="Write the man page and shell completions.")
    parser.add_argument("--check", action="store_true", help="only say which are stale")
    parser.add_argument("root", nargs="?", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    if args.check:
        old = stale(args.root)
        for rel in old:
            print(f"{rel}: stale; run ./dev man", file=sys.stderr)
        return 1 if old else 0
    for rel in write(args.root):
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
