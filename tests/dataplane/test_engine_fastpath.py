"""The engine's batched receive path keeps the per-packet verdicts and counters of the slow
path: replays, forgeries (a forged packet reusing a seen counter counts as a replay, as when
checked before decrypting), keepalives, bad inner packets, spoofed sources, empty datagrams,
and GRO trains mixing keypairs and handshake-sized datagrams. Runs for both fast-path
implementations (C and pure Python) on the loop's path, and for the data-path thread when
built; loopback only, no root.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from meshguard.dataplane import datapath_thread, fastpath
from meshguard.dataplane import engine as engine_mod
from meshguard.wireguard.transport import seal_batch

from .helpers import A_IN, B_IN, World, ipv4_udp, kernel_has_gso, until

# (fast-path implementation, data-path thread)
MODES: list[tuple[fastpath.Impl, bool]] = [(fastpath.python_impl(), False)]
_C = fastpath.c_impl()
if _C is not None:
    MODES.append((_C, False))
    if datapath_thread.available():
        MODES.append((_C, True))


@pytest.fixture(params=MODES, ids=lambda m: "thread" if m[1] else m[0].name)
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Installs the implementation; says whether the engines run the data-path thread."""
    m, thread = request.param
    for name in ("Cipher", "segment_count", "seal_segments", "open_batch", "coalesce"):
        monkeypatch.setattr(fastpath, name, getattr(m, name))
    return bool(thread)


def run(body: Any, thread: bool = False) -> None:
    async def main() -> None:
        w = World(asyncio.get_running_loop(), thread=thread)
        try:
            await body(w)
        finally:
            w.close()

    asyncio.run(main())


def test_receive_verdicts_match_the_slow_path(impl: bool) -> None:
    async def body(w: World) -> None:
        w.ta.peer.send(ipv4_udp(A_IN, B_IN, b"first"))
        await until(lambda: len(w.tb.received) == 1, "handshake and first packet")
        kp = w.pb.keypairs.current  # a's session with b: what b receives
        assert kp is not None
        aead, rcv = kp.send.aead, kp.remote_index
        src = ("127.0.0.1", w.ea.port)
        c = w.db.counters
        # with the thread, the first packet's note reaches b's Device with a later drain:
        # take the base counts once it has
        await until(lambda: c.packets_received >= 1, "the first packet's note")
        base = {k: getattr(c, k) for k in ("replay", "bad_auth", "bad_inner", "bad_source",
                                             "keepalives_received", "packets_received")}

        def delta(k: str) -> int:
            return int(getattr(c, k)) - base[k]

        good = seal_batch(aead, rcv, 1000, [ipv4_udp(A_IN, B_IN, b"one")])[0]
        forged_new = bytearray(seal_batch(aead, rcv, 1001, [ipv4_udp(A_IN, B_IN, b"x")])[0])
        forged_new[-1] ^= 1
        forged_old = bytearray(good)
        forged_old[-1] ^= 1
        keep = seal_batch(aead, rcv, 1002, [b""])[0]
        bad_inner = seal_batch(aead, rcv, 1003, [b"\x45" + bytes(30)])[0]
        spoofed = seal_batch(aead, rcv, 1004, [ipv4_udp("10.0.0.99", B_IN, b"spoof")])[0]
        w.eb.datagrams_in([(good, src), (good, src), (bytes(forged_new), src),
                           (bytes(forged_old), src), (keep, src), (bad_inner, src),
                           (spoofed, src), (b"", src)])
        await until(lambda: len(w.tb.received) == 2, "the good packet")
        assert w.tb.received[1].endswith(b"one")
        assert delta("replay") == 2  # the duplicate, and the forgery with a seen counter
        assert delta("bad_auth") == 1
        assert delta("keepalives_received") == 1
        assert delta("bad_inner") == 1 and delta("bad_source") == 1
        # authenticated and fresh: good, keepalive, bad inner, spoofed
        await until(lambda: delta("packets_received") == 4, "the notes")
        assert c.dropped() > 0  # the empty datagram was counted by the slow path too

        # a GRO train: b's datagrams of one size, one of another keypair's index (unknown
        # here), then more of the first; a shorter last one
        pkts = [ipv4_udp(A_IN, B_IN, b"gro %03d" % i) for i in range(6)]
        msgs = seal_batch(aead, rcv, 2000, pkts)
        stranger = bytearray(msgs[0])
        stranger[4:8] = (rcv ^ 0x5A5A5A5A).to_bytes(4, "little")
        tail = seal_batch(aead, rcv, 2006, [b""])[0]
        train = b"".join([*msgs[:3], bytes(stranger), *msgs[3:], tail])
        unknown0 = c.unknown_index
        rx = w.eb._receive_batch()
        rx.feed(memoryview(train), len(msgs[0]), src)
        rx.finish()
        await until(lambda: len(w.tb.received) == 8, "the train")
        assert w.tb.received[2:] == pkts
        assert c.unknown_index == unknown0 + 1
        await until(lambda: delta("packets_received") == 4 + 7, "the notes")

    run(body, impl)


def test_send_path_seals_what_the_peer_opens(impl: bool) -> None:
    """Plain reads (no vnet header) of varying sizes, some sharing a GSO send, in order."""
    async def body(w: World) -> None:
        w.ta.peer.send(ipv4_udp(A_IN, B_IN, b"first"))
        await until(lambda: len(w.tb.received) == 1, "handshake and first packet")
        w.tb.received.clear()
        # Lazy drain reads one packet after a quiet gap, which the machine's load decides; off,
        # each wake-up reads a full batch and so finds runs to coalesce.
        w.ea.lazy_drain = False
        # runs of ten equal sizes: consecutive equal-size messages share a GSO send
        pkts = [ipv4_udp(A_IN, B_IN, b"%03d" % i + bytes(i // 10 % 3 * 500)) for i in range(150)]
        for p in pkts:
            w.ta.peer.send(p)
        await until(lambda: len(w.tb.received) == len(pkts), "all packets")
        assert w.tb.received == pkts
        if kernel_has_gso(socket.AF_INET6):  # the engine's dual-stack socket
            assert w.ea.gso and w.ea.stats.udp_gso_sends > 0
        assert w.db.counters.dropped() == 0

    run(body, impl)


def test_offloads_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHGUARD_NO_OFFLOAD", "1")
    assert not engine_mod.offload_default()
    from meshguard.testing.rng import SeededRng
    from meshguard.wireguard.device import Device

    e = engine_mod.Engine(Device(SeededRng(1)), -1)
    e.bind(0)
    try:
        assert not e.gso and not e.gro and not e.vnet
        assert e.sock is not None and e.sock.type == socket.SOCK_DGRAM
        assert "gso=off gro=off" in e.describe_offloads()
    finally:
        e.close()
