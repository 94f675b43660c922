"""The plain WireGuard devices of this member (`meshguard export-wg`) as WireGuard peers.

Every device in the config dir's `devices/` (identity/wg_devices.py) becomes a peer of the
mesh interface, on the mesh port, beside the members' peers: its public key and preshared
key, allowed IPs = its address, no endpoint (the device roams in: its endpoint is learned from
its authenticated packets, as for any WireGuard peer) and no keepalive from this side (the
device keeps its NAT mapping open with its PersistentKeepalive). A device key is never a
member's: the node refuses a member whose record claims one (MeshNode.reserved_wg_keys).

This member is the device's gateway: a host route for each device address points at the mesh
interface, and IPv4 forwarding is switched on for that interface only
(net.ipv4.conf.IFACE.forwarding; it goes with the interface), so the device reaches other
members through it, and their replies come back the same way once they route the device's
subnet to this member (docs/policy.md#plain-wireguard-devices). Packets from a device are
judged by this member's policies like any peer's packets.

Userspace mode adds the peers to the Device the engine runs; kernel mode sends them to the
kernel WireGuard device (`apply_kernel`). The set follows `devices/` live: the trust poller
notices a change (identity/trust.py trust_stamp covers the directory) and calls `reload`.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meshguard.crypto.keys import X25519PublicKey
from meshguard.daemon.log_format import register_secret
from meshguard.identity.wg_devices import WgDevice, load_devices
from meshguard.mesh.actions import IPNetwork
from meshguard.wireguard.device import Device, DeviceError

log = logging.getLogger("meshguard.daemon")

# the kernel-mode sink: (public key, preshared key, allowed IPs, remove)
KernelApply = Callable[[bytes, bytes | None, Sequence[IPNetwork], bool], None]


def host_route(op: str, net: IPNetwork, interface: str) -> None:
    """`ip route replace|del NET dev IFACE` (a failure is a warning)."""
    args = ["-6" if net.version == 6 else "-4", "route", op, str(net), "dev", interface]
    res = subprocess.run(["ip", *args], capture_output=True, text=True, check=False,
                         timeout=10)
    if res.returncode != 0:
        log.warning("ip %s: %s", " ".join(args), res.stderr.strip() or res.returncode)


def enable_forwarding(interface: str) -> bool:
    """IPv4 forwarding for packets arriving on `interface` (not the host-wide switch)."""
    path = Path("/proc/sys/net/ipv4/conf") / interface / "forwarding"
    try:
        path.write_text("1\n")
    except OSError as exc:
        log.warning("cannot switch on forwarding on %s (%s): devices reach this member only",
                    interface, exc.strerror or exc)
        return False
    return True


@dataclass
class WgDevicePeers:
    config_dir: Path
    interface: str
    device: Device | None = None  # userspace mode
    apply_kernel: KernelApply | None = None  # kernel mode
    on_keys: Callable[[frozenset[bytes]], None] | None = None  # the node's reserved keys
    route: Callable[[str, IPNetwork, str], None] = host_route
    forwarding: Callable[[str], bool] = enable_forwarding
    active: dict[str, WgDevice] = field(default_factory=dict)
    _forwarding: bool = False
    _problems: frozenset[str] = frozenset()

    def keys(self) -> frozenset[bytes]:
        return frozenset(d.public_key for d in self.active.values())

    def prefixes(self) -> tuple[IPNetwork, ...]:
        """The device addresses this member carries (what it offers as routes)."""
        return tuple(d.network for d in self.active.values())

    def reload(self) -> bool:
        """Read `devices/` again and apply the difference; True when anything changed."""
        devices, problems = load_devices(self.config_dir)
        for p in problems:
            if p not in self._problems:  # once each, not at every poll
                log.warning("devices: %s", p)
        self._problems = frozenset(problems)
        want = {d.name: d for d in devices}
        if want == self.active:
            return False
        gone = [d for n, d in self.active.items() if want.get(n) != d]
        new = [d for n, d in want.items() if self.active.get(n) != d]
        for d in gone:
            self._remove(d)
            del self.active[d.name]
        if self.on_keys is not None:  # before adding: a member holding a device key goes
            self.on_keys(frozenset(d.public_key for d in want.values()))
        for d in new:
            if any(d.preshared_key):
                register_secret(d.preshared_key)  # redacted from every log line
            if self._add(d):
                self.active[d.name] = d
        if self.on_keys is not None and len(self.active) != len(want):
            self.on_keys(self.keys())
        if self.active and not self._forwarding:
            self._forwarding = self.forwarding(self.interface)
        return True

    def _add(self, d: WgDevice) -> bool:
        if self.device is not None:
            try:
                peer = self.device.add_peer(X25519PublicKey(d.public_key))
                peer.preshared_key = d.preshared_key
                peer.persistent_keepalive = 0
                self.device.set_allowed_ips(peer, [d.network], replace=True)
            except DeviceError as exc:
                log.warning("device %s not added: %s", d.name, exc)
                self.device.remove_peer(X25519PublicKey(d.public_key))
                return False
        elif self.apply_kernel is not None:
            self.apply_kernel(d.public_key, d.preshared_key, [d.network], False)
        else:
            return False
        self.route("replace", d.network, self.interface)
        log.info("device %s: WireGuard peer %s at %s", d.name,
                 X25519PublicKey(d.public_key).b64()[:12], d.network)
        return True

    def _remove(self, d: WgDevice) -> None:
        if self.device is not None:
            self.device.remove_peer(X25519PublicKey(d.public_key))
        elif self.apply_kernel is not None:
            self.apply_kernel(d.public_key, None, (), True)
        self.route("del", d.network, self.interface)
        log.info("device %s removed", d.name)


def for_runner(config_dir: Path, interface: str, runner: object,
               on_keys: Callable[[frozenset[bytes]], None]) -> WgDevicePeers:
    """The devices' peers on the userspace Device or through the kernel runner."""
    dev = getattr(runner, "device", None)
    return WgDevicePeers(config_dir, interface, device=dev if isinstance(dev, Device) else None,
                         apply_kernel=getattr(runner, "device_peer", None), on_keys=on_keys)
