from __future__ import annotations

import ipaddress

from meshguard.crypto.keys import X25519PrivateKey, X25519PublicKey
from meshguard.mesh.actions import PeerConfig
from meshguard.mesh.wg_backend import INITIAL_KEEPALIVE_DELAY, DeviceBackend
from meshguard.testing.rng import SeededRng
from meshguard.wire.wireguard import MESSAGE_INITIATION
from meshguard.wireguard.actions import SendDatagram
from meshguard.wireguard.device import Device


def test_backend_drives_device() -> None:
    rng = SeededRng(3)
    dev = Device(rng, X25519PrivateKey(rng.bytes(32)))
    be = DeviceBackend(dev)
    pk = X25519PrivateKey(rng.bytes(32)).public_key.raw
    nets = (ipaddress.ip_network("10.99.3.4/32"), ipaddress.ip_network("fd99:6d67::7/128"))
    be.upsert(PeerConfig(pk, b"i" * 32, ("192.0.2.1", 51821), nets, 25))
    p = dev.peer(X25519PublicKey(pk))
    assert p is not None and p.endpoint == ("192.0.2.1", 51821) and p.persistent_keepalive == 25
    assert sorted(map(str, dev.allowed_ips(p))) == ["10.99.3.4/32", "fd99:6d67::7/128"]
    assert dev.route(ipaddress.ip_address("10.99.3.4").packed) is p
    be.upsert(PeerConfig(pk, b"i" * 32, ("192.0.2.9", 1), nets[1:], 25))
    assert p.endpoint == ("192.0.2.9", 1) and dev.route(ipaddress.ip_address("10.99.3.4").packed) \
        is None
    assert be.stats(pk) == (0.0, 0, 0, ("192.0.2.9", 1))
    be.remove(pk)
    assert dev.peer(X25519PublicKey(pk)) is None and be.stats(pk) == (0.0, 0, 0, None)



def _initiations(actions: list[object]) -> list[SendDatagram]:
    return [a for a in actions if isinstance(a, SendDatagram) and a.data[0] == MESSAGE_INITIATION]


def test_switching_persistent_keepalive_on_starts_a_handshake_lower_key_first() -> None:
    # as `wg set ... persistent-keepalive 25` does on wireguard-go and the kernel: the NAT
    # mapping opens (and a restarted peer is re-keyed) before any traffic; of two members that
    # configure each other at once, the lower key goes first so the initiations do not cross
    keys = sorted((X25519PrivateKey(bytes([i]) * 32) for i in (7, 9)),
                  key=lambda k: k.public_key.raw)
    low, high = keys
    nets = (ipaddress.ip_network("10.99.3.5/32"),)
    for own, other, delay in ((low, high, 0.0), (high, low, INITIAL_KEEPALIVE_DELAY)):
        dev = Device(SeededRng(4), own)
        dev.tick(100.0, 1.7e9)
        be = DeviceBackend(dev)
        be.upsert(PeerConfig(other.public_key.raw, b"j" * 32, ("192.0.2.1", 51821), nets, 25))
        due = dev.next_deadline()
        assert due is not None and due <= 100.0 + delay
        if delay:
            assert not _initiations(dev.tick(100.0 + delay / 2, 1.7e9))
        sent = _initiations(dev.tick(100.0 + delay, 1.7e9))
        assert len(sent) == 1 and sent[0].endpoint == ("192.0.2.1", 51821)
        # an unchanged peer set does not start another one
        be.upsert(PeerConfig(other.public_key.raw, b"j" * 32, ("192.0.2.1", 51821), nets, 25))
        assert not _initiations(dev.tick(100.5 + delay, 1.7e9))


def test_new_path_moves_the_peer_and_starts_a_handshake_past_the_rate_limit() -> None:
    # what the node does after a hole punch or a switch to a relay (mesh/node.py)
    rng = SeededRng(5)
    dev = Device(rng, X25519PrivateKey(rng.bytes(32)))
    other = X25519PrivateKey(rng.bytes(32)).public_key.raw
    p = dev.add_peer(X25519PublicKey(other))
    p.endpoint = ("192.0.2.1", 51821)
    assert len(_initiations(dev.initiate_handshake(10.0, 1.7e9, p))) == 1
    assert not _initiations(dev.initiate_handshake(10.5, 1.7e9, p))  # one per REKEY_TIMEOUT
    punched = ("203.0.113.22", 40007)
    assert dev.new_path(other, 11.0, 1.7e9, punched, initiate=False) == []
    assert p.endpoint == punched
    sent = _initiations(dev.new_path(other, 11.0, 1.7e9))
    assert [s.endpoint for s in sent] == [punched]
    unknown = X25519PrivateKey(rng.bytes(32)).public_key.raw
    assert dev.new_path(unknown, 11.0, 1.7e9, punched) == []


def test_a_peer_that_knocked_before_it_was_added_gets_an_initiation_at_once() -> None:
    # the lower key configured us first and initiated; we had not admitted it yet, so its
    # initiation was refused and it would retransmit only after REKEY_TIMEOUT (5 s): when we
    # add it, we initiate at once instead of after our usual INITIAL_KEEPALIVE_DELAY
    keys = sorted((X25519PrivateKey(bytes([i]) * 32) for i in (7, 9)),
                  key=lambda k: k.public_key.raw)
    low, high = keys
    first = Device(SeededRng(6), low)
    late = Device(SeededRng(7), high)
    first.tick(100.0, 1.7e9)
    late.tick(100.0, 1.7e9)
    knock = DeviceBackend(first)
    knock.upsert(PeerConfig(high.public_key.raw, b"k" * 32, ("192.0.2.2", 51820),
                            (ipaddress.ip_network("10.99.3.6/32"),), 25))
    sent = _initiations(first.tick(100.0, 1.7e9))
    assert len(sent) == 1
    assert late.receive(100.01, 1.7e9, sent[0].data, ("192.0.2.1", 51820)) == []
    assert late.counters.unknown_peer == 1 and late.knocked(low.public_key.raw)
    DeviceBackend(late).upsert(PeerConfig(low.public_key.raw, b"l" * 32, ("192.0.2.1", 51820),
                                          (ipaddress.ip_network("10.99.3.5/32"),), 25))
    due = late.next_deadline()
    assert due is not None and due <= 100.0
    assert len(_initiations(late.tick(100.02, 1.7e9))) == 1
    # a knock is remembered for REKEY_TIMEOUT only, and only for the key that knocked
    late.tick(106.0, 1.7e9)
    assert not late.knocked(low.public_key.raw) and not late.knocked(high.public_key.raw)
