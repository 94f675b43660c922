"""Shared helpers for the NAT tests.

The hole-punch world (test_holepunch.py, test_holepunch_attacks.py): HolePuncher cores on
hosts in a simulated network with NAT routers, a public rendezvous R and two members A and B
behind NATs (`cone_mesh`), and signed requests built by hand. The simulated NATs follow Linux
behaviour measured in a NAT lab (docs/nat-testbed.md): a cone NAT maps an inner endpoint to one
public port for every destination (endpoint-independent mapping), a symmetric NAT gives every
destination a new port; both filter inbound packets by address and port (only a remote
endpoint the inner host has sent to may answer).

The relay world (test_relay.py, test_relay_attacks.py): members with their own relay core
(`Member`), the member view each one sees, and the split of a core's actions.

The port mapping replies (test_portmap.py, test_portmap_attacks.py): PCP and NAT-PMP answers
laid out by hand as RFC 6887 and RFC 6886 say, independent of the codecs under test.
"""

from __future__ import annotations

import heapq
import ipaddress
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.nat.holepunch import NAT_PUBLIC, HolePuncher, PeerInfo, PunchSucceeded
from meshguard.nat.relay import Relay, RelayAction, RelayDelivered, RelayPeer
from meshguard.sansio import Endpoint, SendDatagram
from meshguard.testing.rng import SeededRng
from meshguard.wire import holepunch as wire

NAT_CONE = 2
NAT_SYMMETRIC = 3
LATENCY = 0.02


# hole punching: the simulated network ----------------------------------------------------


@dataclass
class Nat:
    public_ip: str
    symmetric: bool = False
    next_port: int = 40000
    maps: dict[tuple[Endpoint, Endpoint | None], int] = field(default_factory=dict)
    allowed: set[tuple[int, Endpoint]] = field(default_factory=set)  # (public port, remote)
    inner: dict[int, Endpoint] = field(default_factory=dict)
    dropped: int = 0

    def outbound(self, src: Endpoint, dst: Endpoint) -> Endpoint:
        key = (src, dst if self.symmetric else None)
        port = self.maps.get(key)
        if port is None:
            port = src[1] if not self.symmetric and src[1] not in self.inner else self.next_port
            self.next_port += 7
            self.maps[key] = port
            self.inner[port] = src
        self.allowed.add((port, dst))
        return (self.public_ip, port)

    def inbound(self, src: Endpoint, dst: Endpoint) -> Endpoint | None:
        if (dst[1], src) not in self.allowed:
            self.dropped += 1
            return None
        return self.inner[dst[1]]


@dataclass
class Host:
    name: str
    key: Ed25519PrivateKey
    local: Endpoint
    nat: Nat | None
    hp: HolePuncher
    nat_type: int = 0
    advertised: tuple[Endpoint, ...] = ()
    connected: set[bytes] = field(default_factory=set)
    results: list[object] = field(default_factory=list)

    @property
    def ident(self) -> bytes:
        return self.key.public_key.raw


class Net:
    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        self.queue: list[tuple[float, int, bytes, Endpoint, Endpoint]] = []
        self.seq = 0
        self.now = 0.0
        self.delivered = 0
        self.tap: list[tuple[str, bytes, Endpoint]] = []  # what each host received

    def add(self, name: str, local: Endpoint, nat: Nat | None, seed: int, **kw: float) -> Host:
        key = Ed25519PrivateKey(bytes([seed]) * 32)
        h = Host(name, key, local, nat, HolePuncher(key, SeededRng(seed), **kw))  # type: ignore[arg-type]
        h.hp.members = lambda: self.view(h)
        h.hp.connected = lambda p: p.identity_key in h.connected
        self.hosts[name] = h
        return h

    def stun(self, h: Host, nat_type: int) -> None:
        """What STUN would tell the host: its mapping toward a public server."""
        mapped = h.nat.outbound(h.local, ("198.51.100.1", 3478)) if h.nat else h.local
        h.nat_type = nat_type
        h.advertised = (mapped,)
        h.hp.set_self(h.advertised, behind_nat=h.nat is not None)

    def view(self, me: Host) -> dict[bytes, PeerInfo]:
        out = {}
        for h in self.hosts.values():
            if h is me:
                continue
            # gossip reaches every member through the public seed; the gossip endpoint is the
            # advertised one (the rendezvous is public, so it is reachable)
            out[h.ident] = PeerInfo(h.ident, b"W" + h.ident[:31], h.advertised[0],
                                    h.advertised, h.nat_type, True)
        return out

    def send(self, h: Host, data: bytes, dst: Endpoint) -> None:
        src = h.nat.outbound(h.local, dst) if h.nat else h.local
        self.seq += 1
        heapq.heappush(self.queue, (self.now + LATENCY, self.seq, data, src, dst))

    def _host_at(self, ep: Endpoint) -> Host | None:
        for h in self.hosts.values():
            if h.nat is None and h.local == ep:
                return h
            if h.nat is not None and h.nat.public_ip == ep[0]:
                return h
        return None

    def _apply(self, h: Host, actions: list[object]) -> None:
        for a in actions:
            if isinstance(a, SendDatagram):
                self.send(h, a.data, a.endpoint)
            else:
                h.results.append(a)
                if isinstance(a, PunchSucceeded):
                    h.connected.add(a.identity_key)

    def run(self, until: float, step: float = 0.05) -> None:
        while self.now < until:
            while self.queue and self.queue[0][0] <= self.now:
                _, _, data, src, dst = heapq.heappop(self.queue)
                h = self._host_at(dst)
                if h is None:
                    continue
                if h.nat is not None and h.nat.inbound(src, dst) is None:
                    continue
                self.delivered += 1
                self.tap.append((h.name, data, src))
                self._apply(h, h.hp.receive(self.now, 1e9 + self.now, data, src))
            for h in self.hosts.values():
                self._apply(h, h.hp.tick(self.now, 1e9 + self.now))
            self.now = round(self.now + step, 6)


def cone_mesh(b_symmetric: bool = False, **kw: float) -> tuple[Net, Host, Host, Host]:
    net = Net()
    r = net.add("r", ("203.0.113.10", 51821), None, 1, **kw)
    a = net.add("a", ("192.168.10.2", 51821), Nat("203.0.113.21"), 2, **kw)
    b = net.add("b", ("192.168.20.2", 51821), Nat("203.0.113.22", symmetric=b_symmetric), 3,
                **kw)
    net.stun(r, NAT_PUBLIC)
    net.stun(a, NAT_CONE)
    net.stun(b, NAT_SYMMETRIC if b_symmetric else NAT_CONE)
    r.connected |= {a.ident, b.ident}
    for h in (a, b):  # members gossip with the seed, so their NATs let the seed in
        assert h.nat is not None
        h.nat.outbound(h.local, r.local)
    a.connected.add(r.ident)
    b.connected.add(r.ident)
    return net, r, a, b


def deliver(h: Host, net: Net, data: bytes, src: Endpoint) -> list[object]:
    return list(h.hp.receive(net.now, 1e9 + net.now, data, src))


def signed_request(sender: Ed25519PrivateKey, target: bytes, wall: float, session: int = 1,
                   stage: int = wire.STAGE_RENDEZVOUS, signer: Ed25519PrivateKey | None = None
                   ) -> bytes:
    m = wire.PunchMessage(wire.HOLEPUNCH_REQUEST, stage, sender.public_key.raw, target,
                          session, int(wall * 1000), (("203.0.113.21", 51821),))
    body = wire.signed_part(m)
    return body + (signer or sender).sign(wire.SIGN_CONTEXT + body)



# relaying --------------------------------------------------------------------------------


A_EP = ("203.0.113.21", 40001)
B_EP = ("203.0.113.22", 40002)
R_EP = ("203.0.113.10", 51821)


class Member:
    def __init__(self, seed: int, ep: tuple[str, int], nat: int) -> None:
        self.ident = Ed25519PrivateKey(bytes([seed]) * 32).public_key.raw
        self.wg = X25519PrivateKey(bytes([seed + 100]) * 32)
        self.ep = ep
        self.nat = nat
        self.core = Relay(self.ident, self.wg, cookie_secret=bytes([seed]) * 32)
        self.core.behind_nat = nat != 1

    def peer(self) -> RelayPeer:
        return RelayPeer(self.ident, self.wg.public_key.raw, self.ep, self.nat, True)


def view(me: Member, *others: Member) -> dict[bytes, RelayPeer]:
    return {o.ident: o.peer() for o in others if o is not me}


def on(me: Member, members: Mapping[bytes, RelayPeer]) -> Relay:
    """`me`'s relay core, seeing `members`."""
    me.core.members = lambda: members
    return me.core


def split(actions: Sequence[RelayAction]
          ) -> tuple[list[SendDatagram], tuple[bytes, Endpoint] | None]:
    """(the datagrams to send, (payload, placeholder source) delivered to the device)."""
    sends = [a for a in actions if isinstance(a, SendDatagram)]
    got = [(a.payload, a.source) for a in actions if isinstance(a, RelayDelivered)]
    assert len(got) <= 1 and not (sends and got)
    return sends, (got[0] if got else None)


# port mapping ------------------------------------------------------------------------

GW = "192.168.1.1"
SRV = (GW, 5351)
ME = "192.168.1.20"
PORT = 51821
EXT = "198.51.100.7"
WALL = 1.7e9


def mapped(ip: str) -> bytes:
    return ipaddress.IPv6Address(f"::ffff:{ip}").packed


def pcp_reply(request: bytes, *, result: int = 0, lifetime: int = 7200, epoch: int = 1000,
              ext: str = EXT, port: int = PORT, nonce: bytes | None = None) -> bytes:
    """A MAP response to `request`, laid out by hand (RFC 6887 sections 7.2 and 11.1)."""
    assert request[0] == 2 and request[1] == 1 and len(request) == 60
    n = request[24:36] if nonce is None else nonce
    iport = struct.unpack_from("!H", request, 40)[0]
    hdr = struct.pack("!BBBBII12x", 2, 0x81, 0, result, lifetime, epoch)
    return hdr + n + struct.pack("!B3xHH", 17, iport, port) + mapped(ext)


def pmp_replies(sends: list[SendDatagram], *, epoch: int = 1000, port: int = PORT,
                lifetime: int = 7200, result: int = 0) -> list[bytes]:
    out = []
    for s in sends:
        if s.data == b"\x00\x00":
            out.append(struct.pack("!BBHI4s", 0, 128, result, epoch,
                                   ipaddress.IPv4Address(EXT).packed))
        else:
            _, op, _, iport, _, _ = struct.unpack("!BBHHHI", s.data)
            assert op == 1
            out.append(struct.pack("!BBHIHHI", 0, 129, result, epoch, iport, port, lifetime))
    return out
