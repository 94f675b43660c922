"""Shared helpers for the daemon tests: kernel-mode WireGuard, a STUN server's readiness, a
recording kernel device for kernel mode without the module (`RecordingKernel`), and `until`
for waiting on a condition inside an event loop.

Kernel mode is tested for real where the kernel can provide WireGuard and its refusal is tested
where it cannot. Both test files (test_kernel_wg.py and test_up_cli_netns.py) take the decision
from `kernel_wireguard()`, so they never disagree and neither skips. It asks, in order:

1. /sys/module/wireguard exists: the module is loaded (or built in).
2. `modprobe -n -q wireguard` succeeds: the module is installed and the daemon's own
   `modprobe wireguard` will load it.
3. Without modprobe, as root: `ip link add ... type wireguard` in a throwaway namespace, which
   is what the daemon does; nothing is created on the host.

The probe never loads the module itself: step 3 only runs when there is no modprobe, and
without modprobe the kernel cannot load a module on request either.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshguard.crypto.keys import X25519PrivateKey
from meshguard.daemon.kernel_module import KernelModuleMissingError
from meshguard.daemon.kernel_wg import (
    WGPEER_F_REMOVE_ME,
    KernelPeer,
    KernelWireGuard,
    build_set_device,
)
from meshguard.testing.netns import Namespace, netns_skip_reason, unique_name, wait_until
from meshguard.wire import stun

SYS_MODULE = Path("/sys/module/wireguard")


@dataclass(frozen=True)
class KernelWireGuardSupport:
    available: bool
    reason: str


@functools.cache
def kernel_wireguard() -> KernelWireGuardSupport:
    """Whether this kernel can create WireGuard links, and how that was decided."""
    if SYS_MODULE.exists():
        return KernelWireGuardSupport(True, f"{SYS_MODULE} exists")
    modprobe = shutil.which("modprobe")
    if modprobe is not None:
        res = subprocess.run([modprobe, "-n", "-q", "wireguard"], capture_output=True,
                             timeout=30, check=False)
        ok = res.returncode == 0
        return KernelWireGuardSupport(ok, f"`modprobe -n wireguard` exited {res.returncode}")
    if netns_skip_reason() is None:
        with Namespace.create("mgkwg") as ns:
            res2 = ns.run(["ip", "link", "add", unique_name("mgk"), "type", "wireguard"],
                          check=False)
        ok = res2.returncode == 0
        return KernelWireGuardSupport(
            ok, f"no modprobe; `ip link add type wireguard` in a namespace exited {res2.returncode}"
        )
    return KernelWireGuardSupport(False, f"no {SYS_MODULE} and no modprobe (uid {os.geteuid()})")


# KernelWireGuard talks netlink in the namespace of the process that calls it, so the real-link
# checks run in a child process inside a throwaway namespace (never on the host's links).
REPO = Path(__file__).resolve().parents[2]
PEER_PRIVATE = bytes([7] * 32)
WG_PRIVATE = bytes(range(32))


def kernel_link_probe(ifname: str) -> dict[str, object]:
    """Run in the namespace: what KernelWireGuard does with a link `ifname` on this kernel."""
    out: dict[str, object] = {}
    kwg = KernelWireGuard(ifname)
    try:
        kwg.create_link()
    except KernelModuleMissingError as exc:
        out["create_error"] = str(exc)
    out["created"] = kwg.created
    if not kwg.created:
        try:
            kwg.apply(build_set_device(ifname, listen_port=1))
        except KernelModuleMissingError as exc:
            out["apply_error"] = str(exc)
        return out
    try:
        kwg.configure(WG_PRIVATE, 51821)
        peer = X25519PrivateKey(PEER_PRIVATE).public_key.raw
        kwg.set_peers([KernelPeer(peer, ("192.0.2.1", 51821), 25,
                                  (ipaddress.ip_network("10.99.1.2/32"),))])
        out["peers"] = [
            {"public_key": s.public_key.hex(), "endpoint": list(s.endpoint or ()),
             "allowed_ips": s.allowed_ips}
            for s in kwg.peer_stats()
        ]
        link = json.loads(subprocess.run(["ip", "-d", "-j", "link", "show", ifname],
                                         capture_output=True, text=True, check=True).stdout)
        out["kind"] = link[0].get("linkinfo", {}).get("info_kind")
    finally:
        kwg.delete_link()
    out["deleted"] = subprocess.run(["ip", "link", "show", ifname], capture_output=True,
                                    check=False).returncode != 0
    return out


def stun_answers(host: str, port: int | str) -> bool:
    """Run in a namespace: True when a STUN server at host:port answers one binding request."""
    txid = os.urandom(stun.TXID_LEN)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        sock.sendto(stun.encode_binding_request(txid), (host, int(port)))
        try:
            data = sock.recv(2048)
        except OSError:  # timeout, or ICMP port unreachable: not listening yet
            return False
    return stun.is_stun(data) and stun.decode(data).transaction_id == txid


def run_in_namespace(ns: Namespace, helper: str, *args: str) -> Any:
    """Call `helper` (a function of this module) with `args` in a child process inside `ns`
    and return its result, which must be JSON."""
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
            "from tests.daemon import helpers; "
            "print(json.dumps(getattr(helpers, sys.argv[2])(*sys.argv[3:])))")
    res = ns.run([sys.executable, "-c", code, str(REPO), helper, *args])
    return json.loads(res.stdout)


def run_kernel_link_probe(ns: Namespace) -> dict[str, object]:
    """`kernel_link_probe` inside `ns`, with a unique interface name."""
    result: dict[str, object] = run_in_namespace(ns, "kernel_link_probe", unique_name("mgk"))
    return result


def wait_for_stun(ns: Namespace, host: str, port: int, timeout: float = 15) -> None:
    """Return once the STUN server at host:port answers from inside `ns` (coturn binds its
    socket before it serves, so a listening socket alone is not enough)."""
    wait_until(lambda: run_in_namespace(ns, "stun_answers", host, str(port)) is True,
               timeout, f"the STUN server at {host}:{port} to answer")


# kernel mode without the module -------------------------------------------------------


@dataclass(frozen=True)
class Update:
    """One peer of one WG_CMD_SET_DEVICE message, decoded back."""

    wg_key: bytes
    endpoint: tuple[str, int] | None
    keepalive: int | None
    remove: bool


class RecordingKernel(KernelWireGuard):
    """The kernel device: every message is encoded as for the kernel and decoded back."""

    def __init__(self, ifname: str = "mgk-test") -> None:
        super().__init__(ifname)
        self.sent: list[Any] = []  # the decoded messages
        self.updates: list[Update] = []  # their peers

    def apply(self, msg: Any) -> None:
        from pyroute2.netlink.generic.wireguard import wgmsg

        msg["header"]["type"] = 0x1F
        msg.encode()
        d = wgmsg(msg.data)
        d.decode()
        self.sent.append(d)
        for p in d.get_attr("WGDEVICE_A_PEERS") or []:
            key = p.get_attr("WGPEER_A_PUBLIC_KEY")
            ep = p.get_attr("WGPEER_A_ENDPOINT")
            self.updates.append(Update(
                base64.b64decode(key["value"] if isinstance(key, dict) else key),
                (ep["addr"], ep["port"]) if ep else None,
                p.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL"),
                p.get_attr("WGPEER_A_FLAGS") == WGPEER_F_REMOVE_ME))


def mdns_seed_query(local_ip: str, wait: float = 1.5) -> list[str]:
    """What the original Zig meshguard's `--mdns` does (runs inside a namespace): one legacy
    unicast TXT query for `_meshguard._udp.local` to 224.0.0.251:5353 from an ephemeral port,
    then every TXT string of every answer within `wait` seconds."""
    import select
    import time

    from meshguard.errors import WireFormatError
    from meshguard.wire.dns import build_query, parse_response

    found: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(local_ip))
        s.bind((local_ip, 0))
        s.sendto(build_query(0, "_meshguard._udp.local", 16), ("224.0.0.251", 5353))
        end = time.monotonic() + wait
        while (left := end - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            data = s.recv(4096)
            try:
                resp = parse_response(data)
            except WireFormatError:
                continue
            for rtype, rdata in resp.answers:
                i = 0
                while rtype == 16 and i < len(rdata):
                    n = rdata[i]
                    found.append(rdata[i + 1:i + 1 + n].decode("ascii", "replace"))
                    i += 1 + n
    return sorted(found)


def mdns_squat(local_ip: str, instance: str, record: str) -> None:  # pragma: no cover
    """Hold `instance` of `_meshguard._udp.local.` on the LAN (runs inside a namespace until
    killed), advertising `record` as its TXT `meshguard=` value; prints "registered"."""
    import asyncio

    from zeroconf import IPVersion
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    async def main() -> None:
        azc = AsyncZeroconf(interfaces=[local_ip], ip_version=IPVersion.V4Only)
        info = AsyncServiceInfo(
            "_meshguard._udp.local.", f"{instance}._meshguard._udp.local.", port=51821,
            properties={"meshguard": record}, addresses=[socket.inet_aton(local_ip)],
            server="squatter.local.")
        await azc.async_register_service(info)
        print("registered", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait on the running loop until `cond()` holds; AssertionError after `timeout` s."""
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")
