"""Kernel mode: drive the Linux kernel WireGuard device over netlink (pyroute2).

* The link is created with RTM_NEWLINK, IFLA_INFO_KIND "wireguard" (`create_link`).
* Keys, port and peers go through the "wireguard" generic-netlink family, command
  WG_CMD_SET_DEVICE (uapi/linux/wireguard.h). `build_set_device` builds that message without
  sending it, so its attributes are unit-tested; `KernelWireGuard.apply` sends it.
* A kernel without the module is detected before anything is created (kernel_module.py: no
  /sys/module/wireguard and `modprobe wireguard` fails) and again if RTM_NEWLINK answers
  EOPNOTSUPP; either way the daemon stops at once with `KernelModuleMissingError`.

Port design (interop between kernel and userspace nodes): the kernel device owns its UDP listen
port, so the daemon cannot also receive gossip there. Every node therefore advertises *two*
endpoints in its signed gossip record: its WireGuard endpoint and its gossip endpoint. A
userspace node uses one port for both (WireGuard and gossip demultiplexed, docs/wire-format.md); a
kernel node listens for WireGuard on `port` and for gossip on `port + 1`
(`gossip_port_for(mode, port)`). Peers always send WireGuard to the member's WireGuard endpoint
and gossip to its gossip endpoint, so either kind of node talks to either kind. Seeds are given
as gossip endpoints.
"""

from __future__ import annotations

import base64
import errno
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pyroute2 import IPRoute, WireGuard
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.generic.wireguard import wgmsg

from meshguard.daemon.kernel_module import KernelModuleMissingError
from meshguard.errors import MeshguardError

# uapi/linux/wireguard.h
WG_CMD_SET_DEVICE = 1
WG_GENL_VERSION = 1
WGDEVICE_F_REPLACE_PEERS = 0x1
WGPEER_F_REMOVE_ME = 0x1
WGPEER_F_REPLACE_ALLOWEDIPS = 0x2
WGPEER_F_UPDATE_ONLY = 0x4
AF_INET = 2
AF_INET6 = 10

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# a netlink attribute value as pyroute2 takes it: a scalar, an address dict, or nested attributes
NlaValue = str | int | bytes | list["NlaValue"] | dict[str, "NlaValue"]


class KernelWireGuardError(MeshguardError):
    """A netlink request to the kernel WireGuard device failed."""


@dataclass(frozen=True)
class KernelPeer:
    public_key: bytes
    endpoint: tuple[str, int] | None = None
    persistent_keepalive: int | None = None
    allowed_ips: tuple[IPNetwork, ...] = ()
    replace_allowed_ips: bool = True
    preshared_key: bytes | None = None
    remove: bool = False


@dataclass
class KernelPeerStats:
    public_key: bytes
    endpoint: tuple[str, int] | None
    last_handshake_wall: float
    rx_bytes: int
    tx_bytes: int
    allowed_ips: list[str] = field(default_factory=list)


def _b64(raw: bytes) -> str:
    if len(raw) != 32:
        raise ValueError("WireGuard keys are 32 bytes")
    return base64.b64encode(raw).decode("ascii")


def _peer_attrs(peer: KernelPeer) -> dict[str, NlaValue]:
    attrs: list[NlaValue] = [["WGPEER_A_PUBLIC_KEY", _b64(peer.public_key)]]
    if peer.remove:
        attrs.append(["WGPEER_A_FLAGS", WGPEER_F_REMOVE_ME])
        return {"attrs": attrs}
    flags = WGPEER_F_REPLACE_ALLOWEDIPS if peer.replace_allowed_ips else 0
    attrs.append(["WGPEER_A_FLAGS", flags])
    if peer.preshared_key is not None:
        attrs.append(["WGPEER_A_PRESHARED_KEY", _b64(peer.preshared_key)])
    if peer.endpoint is not None:
        host, port = peer.endpoint
        ipaddress.ip_address(host)  # numeric only: the kernel takes a sockaddr
        attrs.append(["WGPEER_A_ENDPOINT", {"addr": host, "port": port}])
    if peer.persistent_keepalive is not None:
        attrs.append(["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", peer.persistent_keepalive])
    if peer.allowed_ips or peer.replace_allowed_ips:
        ips: list[NlaValue] = []
        for net in peer.allowed_ips:
            family = AF_INET if net.version == 4 else AF_INET6
            ips.append({"attrs": [
                ["WGALLOWEDIP_A_FAMILY", family],
                ["WGALLOWEDIP_A_IPADDR", net.network_address.packed],
                ["WGALLOWEDIP_A_CIDR_MASK", net.prefixlen],
            ]})
        attrs.append(["WGPEER_A_ALLOWEDIPS", ips])
    return {"attrs": attrs}


def build_set_device(
    ifname: str,
    *,
    private_key: bytes | None = None,
    listen_port: int | None = None,
    fwmark: int | None = None,
    peers: Sequence[KernelPeer] = (),
    replace_peers: bool = False,
) -> wgmsg:
    """A WG_CMD_SET_DEVICE message (pyroute2 `wgmsg`), built but not encoded or sent."""
    msg = wgmsg()
    msg["cmd"] = WG_CMD_SET_DEVICE
    msg["version"] = WG_GENL_VERSION
    msg["attrs"].append(["WGDEVICE_A_IFNAME", ifname])
    if private_key is not None:
        msg["attrs"].append(["WGDEVICE_A_PRIVATE_KEY", _b64(private_key)])
    if listen_port is not None:
        msg["attrs"].append(["WGDEVICE_A_LISTEN_PORT", listen_port])
    if fwmark is not None:
        msg["attrs"].append(["WGDEVICE_A_FWMARK", fwmark])
    if replace_peers:
        msg["attrs"].append(["WGDEVICE_A_FLAGS", WGDEVICE_F_REPLACE_PEERS])
    if peers:
        msg["attrs"].append(["WGDEVICE_A_PEERS", [_peer_attrs(p) for p in peers]])
    return msg


def _netlink_errno(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


class KernelWireGuard:
    """One kernel WireGuard interface. Blocking netlink calls (the daemon runs them in a thread
    or accepts the short block: each is one request/ack)."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.created = False

    def create_link(self) -> None:
        with IPRoute() as ipr:
            try:
                ipr.link("add", ifname=self.ifname, kind="wireguard")
            except Exception as exc:
                code = _netlink_errno(exc)
                if code == errno.EOPNOTSUPP:
                    raise KernelModuleMissingError("RTM_NEWLINK kind wireguard: EOPNOTSUPP") \
                        from None
                if code == errno.EEXIST:
                    raise KernelWireGuardError(f"interface {self.ifname} already exists") \
                        from None
                if code == errno.EPERM:
                    raise KernelWireGuardError("creating interfaces needs CAP_NET_ADMIN (root)") \
                        from None
                raise KernelWireGuardError(f"cannot create {self.ifname}: {exc}") from None
            self.created = True

    def delete_link(self) -> None:
        if not self.created:
            return
        with IPRoute() as ipr:
            try:
                ipr.link("del", ifname=self.ifname)
            except Exception as exc:
                if _netlink_errno(exc) != errno.ENODEV:
                    raise KernelWireGuardError(f"cannot delete {self.ifname}: {exc}") from None
        self.created = False

    def apply(self, msg: wgmsg) -> None:
        """Send a message from `build_set_device` and wait for the kernel's ack."""
        try:
            wg = WireGuard()
        except Exception as exc:
            if _netlink_errno(exc) == errno.ENOENT:
                raise KernelModuleMissingError("no 'wireguard' generic netlink family") from None
            raise KernelWireGuardError(f"netlink: {exc}") from None
        try:
            wg.nlm_request(msg, msg_type=wg.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK)
        except Exception as exc:
            raise KernelWireGuardError(f"configuring {self.ifname}: {exc}") from None
        finally:
            wg.close()

    def configure(self, private_key: bytes, listen_port: int, fwmark: int | None = None) -> None:
        self.apply(build_set_device(self.ifname, private_key=private_key,
                                    listen_port=listen_port, fwmark=fwmark, replace_peers=True))

    def set_peers(self, peers: Iterable[KernelPeer]) -> None:
        batch = list(peers)
        if batch:
            self.apply(build_set_device(self.ifname, peers=batch))

    def peer_stats(self) -> list[KernelPeerStats]:
        out: list[KernelPeerStats] = []
        wg = WireGuard()
        try:
            for dev in wg.info(self.ifname):
                for p in dev.get_attr("WGDEVICE_A_PEERS") or []:
                    key = p.get_attr("WGPEER_A_PUBLIC_KEY")
                    ep = p.get_attr("WGPEER_A_ENDPOINT")
                    hs = p.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME")
                    out.append(KernelPeerStats(
                        public_key=base64.b64decode(key["value"] if isinstance(key, dict)
                                                    else key),
                        endpoint=(ep["addr"], ep["port"]) if ep else None,
                        last_handshake_wall=float(hs["tv_sec"]) if hs else 0.0,
                        rx_bytes=int(p.get_attr("WGPEER_A_RX_BYTES") or 0),
                        tx_bytes=int(p.get_attr("WGPEER_A_TX_BYTES") or 0),
                    ))
        finally:
            wg.close()
        return out
