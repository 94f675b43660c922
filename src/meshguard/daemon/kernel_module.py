"""Whether this kernel can run kernel mode, and kernel mode's gossip port; kept apart from
kernel_wg.py so that a userspace daemon does not load pyroute2's netlink stack to ask."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from meshguard.errors import MeshguardError

MISSING_MODULE_MESSAGE = (
    "the kernel has no WireGuard module; load it with `modprobe wireguard` or run without --kernel"
)


class KernelModuleMissingError(MeshguardError):
    """The kernel has no WireGuard support."""

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(MISSING_MODULE_MESSAGE + (f" ({detail})" if detail else ""))


def gossip_port_for(kernel: bool, wg_port: int) -> int:
    """The gossip UDP port: the WireGuard port itself in userspace mode, the next one in kernel
    mode (the kernel owns the WireGuard port). kernel_wg.py explains the port design."""
    return wg_port + 1 if kernel else wg_port


def ensure_module(sys_module: Path = Path("/sys/module/wireguard"),
                  modprobe: Sequence[str] = ("modprobe", "wireguard")) -> None:
    """Return if the kernel has WireGuard (built in or loadable); raise otherwise."""
    if sys_module.exists():
        return
    if shutil.which(modprobe[0]) is None:
        raise KernelModuleMissingError(f"{sys_module} is absent and {modprobe[0]} is not installed")
    try:
        proc = subprocess.run(list(modprobe), capture_output=True, text=True, timeout=15,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelModuleMissingError(f"{' '.join(modprobe)} failed: {exc}") from None
    if proc.returncode != 0 or not sys_module.exists():
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise KernelModuleMissingError(detail[-1] if detail else f"{sys_module} is absent")
