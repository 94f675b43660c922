"""wireguard/transport.py: the one receive policy that the Device's slow path and the data-plane
engine both apply (replay window, keepalives, inner packet, source address, drop reasons)."""

from __future__ import annotations

from meshguard.wire.wireguard import TRANSPORT_HEADER_SIZE
from meshguard.wireguard.device import Device
from meshguard.wireguard.keypair import Keypair
from meshguard.wireguard.peer import Peer
from meshguard.wireguard.transport import (
    BAD_AUTH,
    BAD_INNER,
    DROP_REASONS,
    KEEPALIVE,
    OK,
    OpenResult,
    accept_batch,
    open_result,
    seal_batch,
)

from .sim import A_IP, B_IP, ipv4_packet, make_pair


def _session() -> tuple[Keypair, Keypair, Device, float]:
    """(A's sending keypair, B's receiving keypair, B's device, the time) after a handshake."""
    net, a, b, pb, pa = make_pair(seed=31)
    net.send(a, ipv4_packet(A_IP, B_IP, b"start"))
    net.run_for(1.0)
    send, recv = pb.keypairs.current, pa.keypairs.current
    assert send is not None and recv is not None
    return send, recv, b.device, net.clock.now


def _open(recv: Keypair, msg: bytes) -> OpenResult:
    counter = int.from_bytes(msg[8:16], "little")
    plaintext = recv.receive.open_or_none(counter, msg[TRANSPORT_HEADER_SIZE:])
    return open_result(counter, plaintext, len(msg))


def test_open_result_classifies_what_opening_gave() -> None:
    pkt = ipv4_packet(A_IP, B_IP, b"x")
    assert open_result(7, None, 48)[1] == BAD_AUTH
    assert open_result(7, b"", 32)[:3] == (7, KEEPALIVE, b"")
    assert open_result(7, b"\x45" + bytes(30), 48)[1] == BAD_INNER
    counter, status, packet, src, n = open_result(7, pkt + bytes(-len(pkt) % 16), 80)
    assert (counter, status, packet, n) == (7, OK, pkt, 80)
    assert src is not None and bytes(src) == bytes([10, 0, 0, 1])


def test_accept_batch_verdicts() -> None:
    send, recv, dev, _ = _session()
    good = ipv4_packet(A_IP, B_IP, b"good")
    spoofed = ipv4_packet("10.0.0.99", B_IP, b"spoof")
    msgs = seal_batch(send.send.aead, send.remote_index, 100,
                      [good, b"", b"\x45" + bytes(30), spoofed])
    forged = bytearray(seal_batch(send.send.aead, send.remote_index, 104, [good])[0])
    forged[-1] ^= 1
    forged_seen = bytearray(msgs[0])
    forged_seen[-1] ^= 1
    results = [_open(recv, m) for m in
               [*msgs, msgs[0], bytes(forged), bytes(forged_seen)]]
    tun: list[bytes] = []
    drops = dict.fromkeys(DROP_REASONS, 0)
    src_ok: dict[tuple[Peer, bytes], bool] = {}
    n, nbytes, keep = accept_batch(recv, results, dev.source_allowed, src_ok, tun, drops)
    assert tun == [good]
    assert (n, keep) == (4, 1)  # good, keepalive, bad inner, spoofed: all authenticated
    assert nbytes == sum(len(m) for m in msgs)
    # the duplicate and the forgery of a seen counter are replays; the fresh forgery is not
    assert drops == {"unknown_index": 0, "replay": 2, "bad_auth": 1, "bad_inner": 1,
                     "bad_source": 1}
    assert src_ok == {(recv.peer, bytes([10, 0, 0, 1])): True,
                      (recv.peer, bytes([10, 0, 0, 99])): False}


def test_slow_path_counts_what_accept_batch_decides() -> None:
    send, _, dev, now = _session()
    c = dev.counters
    before = c.as_dict()
    spoofed = seal_batch(send.send.aead, send.remote_index, 200,
                         [ipv4_packet("10.0.0.99", B_IP, b"spoof")])[0]
    for _ in range(2):  # the second is a replay
        assert dev.receive(now, 1_700_002_000.0, spoofed, ("10.1.0.1", 51820)) == []
    after = c.as_dict()
    assert after["bad_source"] == before["bad_source"] + 1
    assert after["replay"] == before["replay"] + 1
    assert after["packets_received"] == before["packets_received"] + 1
