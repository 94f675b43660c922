"""What a node advertises on the LAN by mDNS, and what it keeps of what others advertise
(sans-IO; the daemon's daemon/mdns_service.py runs python-zeroconf; docs/seeds.md).

A node registers `<instance>._meshguard._udp.local.` with its gossip port, its underlay
addresses and the TXT strings `meshguard=IP:PORT` (the original Zig meshguard's seed record,
discovery/txt_records.py) and `key=<base64 identity key>`. Every advertisement is hostile
input: it only names an address to send a Join to, and the node behind it is admitted, or not,
by the join and gossip rules as any other. At most MAX_PEERS advertisements are kept, one
address each, so a flood of names can neither grow memory nor turn the node into a sender of
Joins to many addresses.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from meshguard.discovery.txt_records import parse_meshguard_txt
from meshguard.sansio import Endpoint

SERVICE_TYPE = "_meshguard._udp.local."
MAX_PEERS = 16
MAX_INSTANCE = 63  # an instance name is one DNS label


def instance_name(name: str | None, identity_key: bytes) -> str:
    """`<node name>-<hex>` for a node with a certificate, else `meshguard-<hex>`: the hex of
    the identity key keeps two nodes of one name apart."""
    tag = identity_key[:6].hex()
    base = name or "meshguard"
    return f"{base[:MAX_INSTANCE - len(tag) - 1]}-{tag}"


def service_properties(identity_key: bytes, endpoints: list[Endpoint]) -> dict[str, str]:
    """The TXT of this node's service: `meshguard=IP:PORT` for its first IPv4 endpoint (the
    one string the original reads) and `key=<base64 identity>`."""
    props = {"key": base64.b64encode(identity_key).decode()}
    v4 = [e for e in endpoints if ":" not in e[0]]
    if v4:
        props["meshguard"] = f"{v4[0][0]}:{v4[0][1]}"
    return props


@dataclass(frozen=True)
class MdnsPeer:
    instance: str
    endpoint: Endpoint
    identity_key: bytes | None


def _usable(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not (ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.version != 4
                or ip in ipaddress.ip_network("10.99.0.0/16"))


def parse_service(instance: str, properties: Mapping[bytes, bytes | None],
                  addresses: list[str], port: int | None) -> MdnsPeer | str:
    """One resolved advertisement -> the peer it names, or why it is dropped."""
    key: bytes | None = None
    raw_key = properties.get(b"key")
    if raw_key:
        try:
            key = base64.b64decode(raw_key, validate=True)
        except (binascii.Error, ValueError):
            return "bad key"
        if len(key) != 32:
            return "bad key"
    value = properties.get(b"meshguard")
    if value:
        got = parse_meshguard_txt(b"meshguard=" + value)
        if got.endpoint is not None and _usable(got.endpoint[0]):
            return MdnsPeer(instance, got.endpoint, key)
    if port is not None and 0 < port < 65536:
        for a in addresses:
            if _usable(a):
                return MdnsPeer(instance, (a, port), key)
    return "no usable address"


class MdnsPeers:
    """The advertisements kept: at most MAX_PEERS, the first come first kept."""

    def __init__(self, self_key: bytes, own: list[Endpoint]) -> None:
        self._self = self_key
        self._own = set(own)
        self._peers: dict[str, MdnsPeer] = {}
        self.counters = {"mdns_seen": 0, "mdns_dropped": 0, "mdns_full": 0, "mdns_self": 0}

    def set_own(self, own: list[Endpoint]) -> None:
        self._own = set(own)

    def add(self, peer: MdnsPeer | str, instance: str) -> bool:
        """An advertisement appeared or changed; True if the kept endpoints changed."""
        self.counters["mdns_seen"] += 1
        if isinstance(peer, str):
            self.counters["mdns_dropped"] += 1
            return self.remove(instance)
        if peer.identity_key == self._self or peer.endpoint in self._own:
            self.counters["mdns_self"] += 1
            return False
        old = self._peers.get(instance)
        if old is None and len(self._peers) >= MAX_PEERS:
            self.counters["mdns_full"] += 1
            return False
        self._peers[instance] = peer
        return old is None or old.endpoint != peer.endpoint

    def remove(self, instance: str) -> bool:
        return self._peers.pop(instance, None) is not None

    def endpoints(self) -> list[Endpoint]:
        return list(dict.fromkeys(p.endpoint for p in self._peers.values()))

    def __len__(self) -> int:
        return len(self._peers)
