"""MeshNode composition in virtual time: real WireGuard Devices and SWIM cores, one in-memory
UDP network, no sockets. Trusted members get tunnels that carry IP packets both ways (IPv4 and
IPv6); an untrusted node never does; trust removal and death tear tunnels down; kernel-mode
(split port) records interoperate with userspace ones."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.identity.addressing import mesh_ipv4
from meshguard.mesh.node import Joined, MeshNode, PeerDown, PeerUp
from meshguard.mesh.swim_port import NAT_SPLIT_PORT, build_membership, wg_endpoint_of
from meshguard.wire.gossip import NodeRecord
from meshguard.wireguard.actions import SendDatagram, WriteTun

from .helpers import Net, SimNode, Trust


def trust_all(nodes: list[SimNode]) -> None:
    for a in nodes:
        for b in nodes:
            if a is not b:
                a.trust.keys.add(b.key)


def delivered(net: Net, a: SimNode, b: SimNode, v6: bool = False) -> bool:
    b.tun.clear()
    pkt = net.send_ip(a, b, v6)
    net.run(1.0)
    return pkt in b.tun


def test_mesh_through_one_seed() -> None:
    net = Net(7)
    seed = net.add("seed", "192.0.2.1")
    others = [net.add(f"n{i}", f"192.0.2.{i + 2}") for i in range(3)]
    outsider = net.add("x", "192.0.2.99")
    members = [seed, *others]
    trust_all(members)
    outsider.trust.keys.update(m.key for m in members)
    # joins start once trust is in place (admission is asked on the Join)
    net.join(seed, [])
    for n in [*others, outsider]:
        net.join(n, [seed])
    net.run(8.0)
    for n in others:
        assert any(isinstance(e, Joined) for e in n.events)
    for a in members:
        for b in members:
            if a is not b:
                assert b.node.wg_key in a.node.peers, f"{a.name} lacks {b.name}"
                assert delivered(net, a, b), f"{a.name} -> {b.name}"
                assert delivered(net, a, b, v6=True), f"{a.name} -> {b.name} v6"
        assert outsider.node.wg_key not in a.node.peers
        assert not delivered(net, outsider, a)
    assert outsider.node.peers == {}


def test_trust_removal_and_death() -> None:
    net = Net(11)
    a = net.add("a", "192.0.2.1")
    b = net.add("b", "192.0.2.2")
    c = net.add("c", "192.0.2.3")
    trust_all([a, b, c])
    net.join(a, [])
    for n in (b, c):
        net.join(n, [a])
    net.run(6.0)
    assert delivered(net, a, b) and delivered(net, a, c)
    # a stops trusting b: the tunnel goes at once, c is untouched
    a.trust.keys.discard(b.key)
    out = a.node.set_trust(a.trust, net.clock.wall())
    assert [type(x) for x in out] == [PeerDown]
    assert b.node.wg_key not in a.node.peers and not delivered(net, a, b)
    assert delivered(net, a, c)
    # c dies (stops answering): a declares it dead and removes the tunnel
    net.down.add(c.ep)
    end = net.clock.monotonic() + 40.0
    st: dict[bytes, str] = {}
    while st.get(c.key) != "dead" and net.clock.monotonic() < end:  # (shown for DEAD_GRACE)
        net.step()
        st = {m.identity_key: m.state for m in a.node.membership.members()}
    assert st.get(c.key) == "dead"
    assert c.node.wg_key not in a.node.peers
    assert any(isinstance(e, PeerDown) and e.identity_key == c.key for e in a.events)


def test_split_port_record_maps_to_wireguard_port() -> None:
    rec = NodeRecord(b"i" * 32, b"w" * 32, 1, (("198.51.100.7", 51822),), NAT_SPLIT_PORT)
    assert wg_endpoint_of(rec) == ("198.51.100.7", 51821)
    rec2 = NodeRecord(b"i" * 32, b"w" * 32, 1, (("198.51.100.7", 51821),), 2)
    assert wg_endpoint_of(rec2) == ("198.51.100.7", 51821)
    assert wg_endpoint_of(NodeRecord(b"i" * 32, b"w" * 32, 1, (), 0)) is None


def test_kernel_mode_node_gets_peer_on_wireguard_port() -> None:
    """A kernel-mode member (gossip on port+1, split-port flag) is given to userspace peers at
    its WireGuard port, and the kernel node gets PeerUp actions for the kernel device."""
    net = Net(5)
    a = net.add("a", "192.0.2.1")
    net.join(a, [])
    ident = Ed25519PrivateKey(net.rng.bytes(32))
    wg = X25519PrivateKey.generate(net.rng.bytes(32))
    trust = Trust({a.key})
    a.trust.keys.add(ident.public_key.raw)
    c = net.clock
    kport = build_membership(identity=ident, wg_private=wg, certificate=None,
                             endpoints=[("192.0.2.5", 51822)], kernel=True, admitter=trust,
                             rng=net.rng, now=c.monotonic(), wall=c.wall())
    knode = MeshNode(ident.public_key.raw, wg.public_key.raw, kport, trust)  # no Device
    k = SimNode("k", ("192.0.2.5", 51822), ident, knode, trust)
    net.nodes[k.ep] = k
    net.run_actions(k, kport.join_actions([a.ep], c.monotonic(), c.wall()))
    net.run(4.0)
    peer = a.node.peers[wg.public_key.raw]
    assert peer.endpoint == ("192.0.2.5", 51821)
    assert ipaddress.ip_network(f"{mesh_ipv4(k.key)}/32") in peer.allowed_ips
    ups = [e for e in k.events if isinstance(e, PeerUp)]
    assert ups and ups[-1].peer.endpoint == a.ep and ups[-1].peer.wg_key == a.node.wg_key


_PREFIXES = [b"", b"\x01\x00\x00\x00", b"\x02\x00\x00\x00", b"\x04\x00\x00\x00",
             b"\x00\x01\x00\x00\x21\x12\xa4\x42", b"\x01MG\x01\x00", b"\x05MG\x01\x00",
             b"\x06MG\x01\x00", b"\x09MG\x01\x00"]
_FUZZ_NET = Net(99)
_FUZZ_NODE = _FUZZ_NET.add("fuzz", "192.0.2.1")


@given(st.sampled_from(_PREFIXES), st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_remote_garbage_never_raises(prefix: bytes, body: bytes) -> None:
    node = _FUZZ_NODE.node
    out = node.receive(1.0, 1_700_000_000.0, prefix + body, ("203.0.113.5", 4444))
    assert all(isinstance(a, SendDatagram | WriteTun | PeerUp | PeerDown | Joined)
               for a in out)
    assert node.peers == {}


def test_joined_is_reported_only_after_the_seed_answers() -> None:
    # Joined is the daemon's READY=1 for systemd: timers that run before the join is started,
    # or while the seed is down, must not report it
    net = Net(11)
    seed, n = net.add("seed", "192.0.2.1"), net.add("n", "192.0.2.2")
    trust_all([seed, n])
    net.down.add(seed.ep)
    net.run(2.0)  # n's timers run before its join starts
    assert not any(isinstance(e, Joined) for e in n.events)
    net.join(n, [seed])
    net.run(3.0)  # the seed is down: n retries its join
    assert not any(isinstance(e, Joined) for e in n.events)
    net.down.discard(seed.ep)
    net.join(seed, [])
    net.run(8.0)
    assert sum(isinstance(e, Joined) for e in n.events) == 1
