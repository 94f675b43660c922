"""Running nft: the one place the daemon hands a ruleset to nftables (routes' masquerade
table, daemon/route_tables.py; kernel mode's policy table, daemon/kernel_policy.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from meshguard.errors import MeshguardError

NFT_TIMEOUT = 10.0  # seconds


class NftError(MeshguardError):
    """nft refused the ruleset (`refused`) or could not be run (the message is one line)."""

    def __init__(self, message: str, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


def run_nft(args: Sequence[str], script: str | None = None,
            nft: Sequence[str] = ("nft",)) -> str:
    """Run `nft ARGS` (with `script` on stdin, e.g. args ("-f", "-")); its stdout.

    `nft` is the command line that runs nft (e.g. inside a namespace, for tests)."""
    try:
        res = subprocess.run([*nft, *args], input=script, capture_output=True, text=True,
                             timeout=NFT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NftError(f"cannot run nft: {exc}", refused=False) from None
    if res.returncode != 0:
        err = res.stderr.strip().splitlines()
        raise NftError(f"nft: {err[0] if err else f'exit {res.returncode}'}", refused=True)
    return res.stdout
