"""The kernel-mode hole puncher (HolePuncher(probe=False)) and the kernel punch core
(nat/kernel_punch.py): stage 0 ends in PunchRendezvous without probes, the kernel's statistics
prove a punch only for an authenticated path that is not the relay proxy."""

from __future__ import annotations

from meshguard.crypto.keys import Ed25519PrivateKey
from meshguard.nat.holepunch import (
    HolePuncher,
    PeerInfo,
    PunchFailed,
    PunchRendezvous,
    PunchSucceeded,
)
from meshguard.nat.kernel_punch import (
    KernelPeerState,
    KernelPunch,
    PunchEnded,
    PunchEndpoint,
    PunchProven,
    wireguard_candidates,
)
from meshguard.sansio import SendDatagram
from meshguard.testing.rng import SeededRng
from meshguard.wire.holepunch import HOLEPUNCH_REQUEST, STAGE_PROBE, decode

WALL = 1_700_000_000.0
A_EP, B_EP, R_EP = ("203.0.113.1", 51822), ("203.0.113.2", 51822), ("198.51.100.1", 51821)


def _pair() -> tuple[HolePuncher, HolePuncher, bytes, bytes]:
    ka, kb, kr = (Ed25519PrivateKey(bytes([x]) * 32) for x in (1, 2, 3))
    ia, ib, ir = (k.public_key.raw for k in (ka, kb, kr))
    view = {ia: PeerInfo(ia, b"A" * 32, A_EP, (A_EP,), 2, True),
            ib: PeerInfo(ib, b"B" * 32, B_EP, (B_EP,), 2, True),
            ir: PeerInfo(ir, b"R" * 32, R_EP, (R_EP,), 1, True)}
    a = HolePuncher(ka, SeededRng(1), probe=False, timeout=12.0,
                    members=lambda: {k: v for k, v in view.items() if k != ia})
    b = HolePuncher(kb, SeededRng(2), probe=False, timeout=12.0,
                    members=lambda: {k: v for k, v in view.items() if k != ib})
    a.set_self((A_EP,), behind_nat=True)
    b.set_self((B_EP,), behind_nat=True)
    return a, b, ia, ib


def test_stage_zero_ends_in_rendezvous_without_probes() -> None:
    a, b, ia, ib = _pair()
    a.tick(0.0, WALL)
    (req,) = a.tick(4.5, WALL + 4.5)
    assert isinstance(req, SendDatagram) and req.endpoint == R_EP
    out = b.receive(4.6, WALL + 4.6, req.data, R_EP)  # as R forwards it
    sends = [x for x in out if isinstance(x, SendDatagram)]
    assert [x.endpoint for x in sends] == [R_EP]  # the response only: no probe to A
    assert [x for x in out if isinstance(x, PunchRendezvous)] == [
        PunchRendezvous(ia, (A_EP,), False)]
    back = a.receive(4.7, WALL + 4.7, sends[0].data, R_EP)
    assert back == [PunchRendezvous(ib, (B_EP,), True)]
    # a userspace peer's probe reached the gossip port: answering it would prove a path the
    # kernel's tunnel does not take, so it draws nothing (and costs no signature check)
    probe = b._sign(HOLEPUNCH_REQUEST, STAGE_PROBE, ia, decode(req.data).session, WALL + 4.7,
                    (), nonce=5)
    assert a.receive(4.7, WALL + 4.7, probe, B_EP) == []
    assert a.counters["punch_probe_ignored"] == 1 and a.counters["punch_bad_signature"] == 0
    # no probe timers: later ticks send nothing
    assert a.next_deadline() != 4.7 + a.probe_interval
    assert [x for x in a.tick(5.0, WALL + 5) if isinstance(x, SendDatagram)] == []
    assert all(decode(x.data).stage != STAGE_PROBE for x in sends)
    # the kernel's proof ends the session as a success; B's session times out
    assert a.proven(6.0, ib, ("203.0.113.2", 51821)) == [
        PunchSucceeded(ib, ("203.0.113.2", 51821), 6.0 - 4.5)]
    assert not a.running(ib) and a.proven(6.1, ib, B_EP) == []
    assert b.running(ia)
    assert PunchFailed(ia) in b.tick(4.6 + 12.0, WALL + 16.6)
    assert not b.running(ia)


def test_candidates_are_the_wireguard_ports() -> None:
    eps = (("203.0.113.1", 51822), ("10.0.0.5", 51822), ("203.0.113.1", 51822),
           ("127.0.0.1", 51822), ("10.0.0.6", 1))
    assert wireguard_candidates(eps, 1) == (("203.0.113.1", 51821), ("10.0.0.5", 51821))
    assert wireguard_candidates(eps[:1], 0) == (("203.0.113.1", 51822),)


def test_kernel_punch_rotates_and_proves_only_authenticated_direct_paths() -> None:
    kp = KernelPunch()
    c1, c2 = ("203.0.113.2", 51821), ("10.0.0.2", 51821)
    assert kp.start(0.0, WALL, b"i", b"w", (c1, c2), relayed=False) == [
        PunchEndpoint(b"w", c1, 1)]
    assert kp.tick(5.0, WALL + 5) == []
    assert kp.tick(6.0, WALL + 6) == [PunchEndpoint(b"w", c2, 1)]
    assert kp.next_deadline() is None  # the last candidate: the session's timeout ends it
    # an old handshake, or one through the proxy, proves nothing
    assert kp.observe(7.0, WALL + 7, {b"w": KernelPeerState(WALL - 300, 5, c2)}) == []
    assert kp.observe(7.5, WALL + 7.5, {b"w": KernelPeerState(WALL + 7, 9,
                                                              ("127.0.0.1", 4000))}) == []
    assert kp.punching(b"w")
    got = kp.observe(8.0, WALL + 8, {b"w": KernelPeerState(WALL + 8, 9, c2)})
    assert got == [PunchProven(b"i", b"w", c2)] and not kp.punching(b"w")


def test_a_relayed_punch_is_proven_by_direct_bytes_or_ends_in_its_window() -> None:
    kp = KernelPunch()
    c1 = ("203.0.113.2", 51821)
    kp.start(0.0, WALL + 0.5, b"i", b"w", (c1,), relayed=True)
    # a handshake of the punch's first second may have come through the relay
    assert kp.observe(0.5, WALL + 1, {b"w": KernelPeerState(WALL, 100, c1)}) == []
    assert kp.observe(1.0, WALL + 1, {b"w": KernelPeerState(WALL, 100, c1)}) == []
    assert kp.observe(2.0, WALL + 2, {b"w": KernelPeerState(WALL, 132, c1)}) == [
        PunchProven(b"i", b"w", c1)]
    kp.start(10.0, WALL + 10, b"i", b"w", (c1,), relayed=True)
    assert kp.tick(13.9, WALL + 13.9) == []
    assert kp.tick(14.0, WALL + 14) == [PunchEnded(b"i", b"w")]
    assert kp.active() == []
