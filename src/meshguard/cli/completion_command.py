"""`meshguard completion bash|zsh`: the shell completion script, generated from the parser.

The script completes every sub-command and option that `meshguard --help` lists (shtab reads
the full parser of cli.main.build_parser). To use it:

    source <(meshguard completion bash)                               # this shell
    meshguard completion bash > /etc/bash_completion.d/meshguard      # every bash
    meshguard completion zsh > "${fpath[1]}/_meshguard"               # zsh

A wheel installs the same scripts (completions/ in the source tree, kept up to date by
tests/test_packaging.py) where bash-completion and zsh look under its prefix.
"""

from __future__ import annotations

import argparse
import sys

SHELLS = ("bash", "zsh")


def completion_script(shell: str) -> str:
    """The completion script for `shell` (one of SHELLS), ending in a newline."""
    import shtab

    from meshguard.cli.main import build_parser

    script = shtab.complete(build_parser(), shell=shell)
    return script if script.endswith("\n") else script + "\n"


def _completion(args: argparse.Namespace) -> int:
    sys.stdout.write(completion_script(args.shell))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "completion", help="print the shell completion script (bash or zsh)",
        description="Print the completion script for SHELL; `source <(meshguard completion "
                    "bash)` enables it in this shell.")
    p.add_argument("shell", choices=SHELLS, metavar="SHELL", help="bash or zsh")
    p.set_defaults(func=_completion)
