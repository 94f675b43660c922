from __future__ import annotations

import ipaddress

from meshguard.crypto.keys import X25519PrivateKey, X25519PublicKey
from meshguard.mesh.node import PeerConfig
from meshguard.mesh.wg_backend import DeviceBackend
from meshguard.testing.rng import SeededRng
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


def test_switching_persistent_keepalive_on_starts_a_handshake_at_once() -> None:
    # as `wg set ... persistent-keepalive 25` does on wireguard-go and the kernel: the NAT
    # mapping opens (and the handshake happens) before any traffic
    from meshguard.wire.wireguard import MESSAGE_INITIATION
    from meshguard.wireguard.actions import SendDatagram

    rng = SeededRng(4)
    dev = Device(rng, X25519PrivateKey(rng.bytes(32)))
    be = DeviceBackend(dev)
    pk = X25519PrivateKey(rng.bytes(32)).public_key.raw
    nets = (ipaddress.ip_network("10.99.3.5/32"),)
    be.upsert(PeerConfig(pk, b"j" * 32, ("192.0.2.1", 51821), nets, 25))
    due = dev.next_deadline()
    assert due is not None and due <= 100.0
    sent = [a for a in dev.tick(100.0, 1.7e9) if isinstance(a, SendDatagram)]
    assert len(sent) == 1 and sent[0].data[0] == MESSAGE_INITIATION
    assert sent[0].endpoint == ("192.0.2.1", 51821)
    # an unchanged peer set does not start another one
    be.upsert(PeerConfig(pk, b"j" * 32, ("192.0.2.1", 51821), nets, 25))
    assert not [a for a in dev.tick(100.5, 1.7e9) if isinstance(a, SendDatagram)]
