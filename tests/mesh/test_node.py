from __future__ import annotations

import ipaddress
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import pytest

from meshguard.identity.addressing import mesh_ipv4, mesh_ipv6
from meshguard.identity.trust import Admission
from meshguard.mesh.node import (
    MemberView,
    MeshNode,
    PeerDown,
    PeerUp,
    SelfAddressChanged,
)
from meshguard.testing.rng import SeededRng
from meshguard.wireguard.actions import SendDatagram, WriteTun

from .helpers import FakeBackend, FakeMembership, FakeTrust

WALL = 1_700_000_000.0
rng = SeededRng(7)


def key() -> bytes:
    return rng.bytes(32)


Adm = Admission  # the trust store's typed answer


class FakeDevice:
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def receive(self, now: float, wall: float, data: bytes, src: tuple[str, int]
                         ) -> list[Any]:
        self.got.append(data)
        return [WriteTun(b"inner"), SendDatagram(b"reply", src)]

    def send_packet(self, now: float, wall: float, ip_packet: bytes) -> list[Any]:
        return [SendDatagram(b"sealed", ("192.0.2.2", 1))]

    def tick(self, now: float, wall: float) -> list[Any]:
        return []

    def next_deadline(self) -> float | None:
        return None


def member(ik: bytes, state: str = "alive", cert: bytes | None = None,
           port: int = 51821) -> MemberView:
    return MemberView(ik, key(), ("192.0.2.1", port), ("192.0.2.1", port), cert, state, 1)


def make(trusted: Iterable[MemberView] = ()) -> tuple[MeshNode, FakeMembership, FakeTrust,
                                                      FakeBackend]:
    ms, tr, be = FakeMembership(), FakeTrust(), FakeBackend()
    node = MeshNode(key(), key(), ms, tr, device=FakeDevice(), backend=be)
    for m in trusted:
        tr.keys.add(m.identity_key)
        ms.view[m.identity_key] = m
    return node, ms, tr, be


def test_trusted_alive_members_become_peers() -> None:
    a, b = member(key()), member(key())
    node, ms, _, be = make([a, b])
    stranger = member(key())
    ms.view[stranger.identity_key] = stranger
    out = node.reconcile(WALL)
    ups = [x for x in out if isinstance(x, PeerUp)]
    assert {u.peer.wg_key for u in ups} == {a.wg_key, b.wg_key}
    assert set(be.peers) == {a.wg_key, b.wg_key}
    p = be.peers[a.wg_key]
    assert p.endpoint == ("192.0.2.1", 51821) and p.keepalive == 25
    assert ipaddress.ip_network(f"{mesh_ipv6(a.identity_key)}/128") in p.allowed_ips
    assert ipaddress.ip_network(f"{mesh_ipv4(a.identity_key)}/32") in p.allowed_ips
    # a second reconcile changes nothing
    assert node.reconcile(WALL) == []


def test_untrusted_never_gets_tunnel_even_if_alive() -> None:
    node, ms, _, be = make()
    s = member(key())
    ms.view[s.identity_key] = s
    assert node.reconcile(WALL) == [] and be.peers == {}


def test_org_certificate_admission() -> None:
    node, ms, tr, be = make()
    m = member(key(), cert=b"CERT")
    ms.view[m.identity_key] = m
    tr.orgs_cert.add(b"CERT")
    node.reconcile(WALL)
    assert m.wg_key in be.peers


def test_dead_and_left_members_lose_their_tunnel() -> None:
    a, b = member(key()), member(key())
    node, ms, _, be = make([a, b])
    node.reconcile(WALL)
    ms.view[a.identity_key] = replace(a, state="suspect")
    assert node.reconcile(WALL) == []  # suspect keeps the tunnel
    ms.view[a.identity_key] = replace(a, state="dead")
    ms.view[b.identity_key] = replace(b, state="left")
    out = node.reconcile(WALL)
    assert {d.wg_key for d in out if isinstance(d, PeerDown)} == {a.wg_key, b.wg_key}
    assert be.peers == {}


def test_trust_removal_tears_down_on_reload() -> None:
    a, b = member(key()), member(key())
    node, _, tr, be = make([a, b])
    node.reconcile(WALL)
    calls = tr.calls
    node.reconcile(WALL)
    assert tr.calls == calls  # cached
    new = FakeTrust(keys={b.identity_key})
    out = node.set_trust(new, WALL)
    assert [type(x) for x in out] == [PeerDown]
    assert set(be.peers) == {b.wg_key}


def test_endpoint_change_updates_peer() -> None:
    a = member(key())
    node, ms, _, be = make([a])
    node.reconcile(WALL)
    ms.view[a.identity_key] = replace(a, wg_endpoint=("198.51.100.4", 4000))
    out = node.reconcile(WALL)
    assert len(out) == 1 and isinstance(out[0], PeerUp)
    assert be.peers[a.wg_key].endpoint == ("198.51.100.4", 4000)


def test_self_and_bad_certificates_are_skipped() -> None:
    node, ms, tr, _ = make()
    me = MemberView(node.identity_key, node.wg_key, ("127.0.0.1", 1), None, None, "alive")
    ms.view[me.identity_key] = me
    tr.keys.add(me.identity_key)
    bad = member(key(), cert=b"boom")
    ms.view[bad.identity_key] = bad
    assert node.reconcile(WALL) == []
    assert node.counters["admission_errors"] == 1


def test_ipv4_collision_gives_distinct_routes() -> None:
    k1, k2 = colliding_pair()
    ip = mesh_ipv4(k1)
    a, b = member(k1), member(k2)
    node, _, _, be = make([a, b])
    node.reconcile(WALL)
    v4 = [n for p in be.peers.values() for n in p.allowed_ips if n.version == 4]
    assert len(v4) == len(set(v4)) == 2
    low = min(k1, k2)
    low_peer = next(p for p in be.peers.values() if p.identity_key == low)
    assert ipaddress.ip_network(f"{ip}/32") in low_peer.allowed_ips


def colliding_pair() -> tuple[bytes, bytes]:
    """Two keys with the same natural IPv4, lower first (birthday search: ~300 tries)."""
    seen: dict[object, bytes] = {}
    while True:
        k = key()
        ip = mesh_ipv4(k)
        if ip in seen:
            return min(k, seen[ip]), max(k, seen[ip])
        seen[ip] = k


def test_self_address_moves_on_collision_with_lower_key() -> None:
    low, high = colliding_pair()
    ms, tr = FakeMembership(), FakeTrust()
    node = MeshNode(high, key(), ms, tr, device=FakeDevice(), backend=FakeBackend())
    mine = mesh_ipv4(high)
    assert node.self_ipv4 == mine
    tr.keys.add(low)
    ms.view[low] = member(low)
    out = node.reconcile(WALL)
    moved = [x for x in out if isinstance(x, SelfAddressChanged)]
    assert moved and moved[0].old == mine and moved[0].new not in (mine, None)
    assert node.self_ipv4 == moved[0].new
    (peer,) = node.peers.values()
    assert ipaddress.ip_network(f"{mine}/32") in peer.allowed_ips


def test_demux_routes_datagrams() -> None:
    node, ms, _, _ = make()
    dev = node.device
    assert isinstance(dev, FakeDevice)
    wg = struct.pack("<I", 4) + b"\x00" * 28
    out = node.receive(1.0, WALL, wg, ("192.0.2.5", 9))
    assert out == [WriteTun(b"inner"), SendDatagram(b"reply", ("192.0.2.5", 9))]
    assert dev.got == [wg]
    out = node.receive(1.0, WALL, b"\x01gossip", ("192.0.2.5", 9))
    assert out[0] == SendDatagram(b"\x03ack", ("192.0.2.5", 9))
    assert ms.received == [(b"\x01gossip", ("192.0.2.5", 9))]
    for junk in (b"", b"\xff" * 50, b"\xfeabc"):
        assert node.receive(1.0, WALL, junk, ("192.0.2.5", 9)) == []
    assert node.counters["garbage_dropped"] == 3
    assert node.counters["gossip_rx"] == 1 and node.counters["wireguard_rx"] == 1
    assert node.send_packet(1.0, WALL, b"\x45" + b"\x00" * 19) == [
        SendDatagram(b"sealed", ("192.0.2.2", 1))]


def test_kernel_mode_without_device_counts_wireguard_as_garbage() -> None:
    ms, tr = FakeMembership(), FakeTrust()
    node = MeshNode(key(), key(), ms, tr)
    assert node.receive(1.0, WALL, struct.pack("<I", 1) + bytes(144), ("1.2.3.4", 1)) \
        == []
    assert node.counters["garbage_dropped"] == 1
    a = member(key())
    tr.keys.add(a.identity_key)
    ms.view[a.identity_key] = a
    out = node.reconcile(WALL)
    assert isinstance(out[0], PeerUp)  # kernel mode applies these through netlink


def test_leave_sends_goodbye() -> None:
    node, ms, _, _ = make()
    assert node.leave(1.0, WALL) == [SendDatagram(b"\x01leave", ("192.0.2.9", 51821))]
    assert ms.left


def test_stun_through_the_node() -> None:
    from meshguard.mesh.node import StunResult
    from meshguard.nat.stun_client import NatType, StunClient
    from meshguard.wire import stun as stun_codec

    node, _, _, _ = make()
    server = ("198.51.100.1", 3478)
    (req,) = node.start_stun(StunClient(SeededRng(1), [server]), 0.0)
    assert isinstance(req, SendDatagram) and req.endpoint == server
    # unanswered: the node's timers retransmit
    d = node.next_deadline()
    assert d is not None and d <= 0.5
    again = [a for a in node.tick(0.5, WALL) if isinstance(a, SendDatagram)]
    assert again and again[0].data == req.data
    txid = stun_codec.decode(req.data).transaction_id
    resp = stun_codec.encode_binding_success(txid, ("192.0.2.77", 40000))
    out = node.receive(0.6, WALL, resp, server)
    assert out == [StunResult(("192.0.2.77", 40000), int(NatType.UNKNOWN))]
    # late duplicates are counted, not re-reported
    assert node.receive(0.7, WALL, resp, server) == []
    assert node.counters["stun_rx"] == 2 and node.counters["stun_unexpected"] == 1


def test_periodic_recheck_drops_expired_certificates() -> None:
    from meshguard.mesh.node import TRUST_RECHECK

    @dataclass
    class Expiring:
        until: float

        def admit(self, node_key: bytes, certificate: bytes | None, now_wall: float) -> Adm:
            return Adm(now_wall < self.until, "")

    ms = FakeMembership()
    be = FakeBackend()
    node = MeshNode(key(), key(), ms, Expiring(WALL + 30), backend=be)
    m = member(key(), cert=b"C")
    ms.view[m.identity_key] = m
    node.tick(0.0, WALL)
    assert m.wg_key in be.peers
    assert node.tick(10.0, WALL + 10) == []  # cached, still valid
    d = node.next_deadline()
    assert d is not None and d <= TRUST_RECHECK
    out = node.tick(TRUST_RECHECK, WALL + TRUST_RECHECK)
    assert [type(x) for x in out] == [PeerDown] and be.peers == {}


def test_learned_revocations_are_logged_at_a_bounded_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # whoever holds a trusted org key may sign revocations by the thousand: one log line each
    # would let it flood the log, so after a burst they are only counted
    from meshguard.mesh import org_wiring
    from meshguard.mesh.org_gossip import RevocationLearned
    from meshguard.wire.org import CertRevocation

    node, *_ = make()
    revs = [CertRevocation(b"o" * 32, bytes([i]) * 32, i, b"s" * 64) for i in range(50)]
    with caplog.at_level(logging.WARNING, logger="meshguard.mesh.org_wiring"):
        org_wiring.learned(node, [RevocationLearned(r) for r in revs], wall=1000.0)
    lines = [r for r in caplog.records if "revoked its certificate" in r.getMessage()]
    assert len(lines) == 10
    assert node.counters["revocation_logs_suppressed"] == 40


def test_a_member_claiming_a_plain_devices_key_gets_no_tunnel() -> None:
    """The attack: a trusted member's signed record names the WireGuard key of a plain
    device this node is the gateway of (daemon/wg_device_peers.py). It must not take over
    the device's peer (its allowed IPs would replace the device's)."""
    honest, thief = member(key()), member(key())
    node, _, _, be = make([honest, thief])
    node.reconcile(WALL)
    assert thief.wg_key in be.peers
    node.reserved_wg_keys = frozenset({thief.wg_key})
    out = node.reconcile(WALL)
    assert [x.wg_key for x in out if isinstance(x, PeerDown)] == [thief.wg_key]
    assert set(be.peers) == {honest.wg_key}
    node._admission.clear()
    assert thief.wg_key not in node.desired_peers(WALL)[0]
