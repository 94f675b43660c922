"""The batched engine end to end on loopback UDP, with SOCK_SEQPACKET pairs standing in for TUNs.

No root needed: two Devices, two Engines, one asyncio loop; conditions are awaited with
deadlines (no sleeps).
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from meshguard.dataplane import datapath_thread
from meshguard.wireguard.device import seal_transport
from meshguard.wireguard.transport import seal_batch

from .helpers import A_IN, B_IN, DEADLINE, World, ipv4_udp, run, until

THREAD = [False, True] if datapath_thread.available() else [False]


@pytest.mark.parametrize("thread", THREAD, ids=lambda t: "thread" if t else "loop")
@pytest.mark.parametrize("outer", ["127.0.0.1", "::1"])
def test_handshake_then_batched_bulk_both_ways(outer: str, thread: bool) -> None:
    async def body(w: World) -> None:
        first = ipv4_udp(A_IN, B_IN, b"first")
        w.ta.peer.send(first)  # no session yet: queued, handshake started
        await until(lambda: len(w.tb.received) == 1, "first packet")
        assert w.tb.received[0] == first
        # the thread delivers the first packet before its note (the responder's session is
        # confirmed) reaches b's Device: that takes the next drain
        await until(lambda: w.pb.last_handshake_wall > 0 and w.pa.last_handshake_wall > 0,
                    "both sides' handshakes")
        n = 300
        pkts = [ipv4_udp(A_IN, B_IN, b"a->b %d" % i + bytes(i % 200)) for i in range(n)]
        # Lazy drain reads one packet after a quiet gap, and how long a gap is depends on the
        # machine's load; its own test covers it. Off here, the batching is deterministic.
        w.ea.lazy_drain = w.eb.lazy_drain = False
        rx_before, batches_before = w.ea.stats.tun_rx, w.ea.stats.tun_rx_batches
        for p in pkts:
            w.ta.peer.send(p)
        back = [ipv4_udp(B_IN, A_IN, b"b->a %d" % i) for i in range(200)]
        for p in back:
            w.tb.peer.send(p)
        await until(lambda: len(w.tb.received) == 1 + n and len(w.ta.received) == 200, "bulk")
        assert w.tb.received[1:] == pkts
        assert w.ta.received == back
        assert w.ea.stats.tun_rx - rx_before == n
        if not thread:
            # all n were queued before a's engine ran: drained in full batches of 64 per
            # wake-up (the thread reads while they are still being written)
            assert w.ea.stats.tun_rx_batches - batches_before == -(-n // w.ea.batch)
        # a sends each batch in one callback, so b's wake-ups find several datagrams queued
        assert w.eb.stats.udp_rx_batches < w.eb.stats.udp_rx
        assert w.da.counters.dropped() == 0 and w.db.counters.dropped() == 0
        # the thread's notes reach the Devices within a drain
        await until(lambda: w.pb.tx_bytes > n * 48 and w.pa.rx_bytes == w.pb.tx_bytes,
                    "the byte counts")
        assert w.pb.endpoint == (outer, w.eb.port)
        assert ("datapath=thread" if thread else "datapath=loop") in w.ea.describe_offloads()

    run(body, outer, thread)


def test_garbage_spoofed_source_and_unroutable_are_counted_not_raised() -> None:
    async def body(w: World) -> None:
        w.ta.peer.send(ipv4_udp(A_IN, B_IN, b"hello"))
        await until(lambda: len(w.tb.received) == 1, "first packet")
        junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for data in (b"", b"\x04\x00\x00\x00" + bytes(40), b"\x01" * 148, os.urandom(70)):
            junk.sendto(data, ("127.0.0.1", w.eb.port))
        junk.close()
        # inner source not in a's allowed IPs at b; and a destination nobody routes
        w.ta.peer.send(ipv4_udp("10.0.0.99", B_IN, b"spoofed"))
        w.ta.peer.send(ipv4_udp(A_IN, "192.0.2.1", b"nowhere"))
        w.ta.peer.send(b"\x00not ip")
        w.ta.peer.send(ipv4_udp(A_IN, B_IN, b"after"))
        await until(lambda: len(w.tb.received) == 2, "packet after the junk")
        assert w.tb.received[1].endswith(b"after")
        await until(lambda: w.eb.stats.udp_rx >= 7, "junk received")
        c = w.db.counters
        # the data-path thread's drop counts reach the Devices with its next drain
        await until(lambda: c.bad_source == 1 and w.da.counters.no_route == 1, "the drops")
        assert c.bad_source == 1
        assert c.unknown_index + c.bad_length + c.bad_type + c.bad_mac1 >= 3
        assert w.da.counters.no_route == 1 and w.da.counters.bad_inner == 1

    run(body)


def test_send_errors_are_counted() -> None:
    async def body(w: World) -> None:
        w.ea.send_datagrams([(b"x", ("not-an-address", 1)), (b"y", ("127.0.0.1", 9))])
        assert w.ea.stats.udp_send_errors == 1
        w.ea.write_tun([b""])  # a zero-length write to a seqpacket is fine; no raise either way
        # a closed socket, as after close(): nothing raised
        w.ea.close()
        w.ea.send_datagrams([(b"z", ("127.0.0.1", 9))])

    run(body)


def test_seal_batch_matches_device_sealing() -> None:
    from meshguard.crypto.aead import TransportCipher

    cipher = TransportCipher(bytes(range(32)))
    pkts = [b"", b"x" * 17, b"y" * 1400]
    batch = seal_batch(cipher.aead, 0x1234, 40, pkts)
    assert batch == [seal_transport(cipher, 0x1234, 40 + i, p) for i, p in enumerate(pkts)]


def test_rebind_keeps_old_socket_when_port_busy() -> None:
    async def body(w: World) -> None:
        old = w.ea.port
        with pytest.raises(OSError):
            w.ea.bind(w.eb.port)
        assert w.ea.port == old and w.ea.sock is not None
        new = w.ea.bind(0)
        assert new != w.eb.port
        w.db.peer(w.ka.public_key).endpoint = ("127.0.0.1", new)  # type: ignore[union-attr]
        w.ta.peer.send(ipv4_udp(A_IN, B_IN, b"after rebind"))
        await until(lambda: len(w.tb.received) == 1, "packet after rebind")

    run(body)


def _direct(w: World) -> None:
    """Stop the loop's readers so the test drives the engines' wake-ups itself."""
    for fd in (w.ta.peer.fileno(), w.tb.peer.fileno(), w.ea.tun_fd, w.eb.tun_fd):
        w.loop.remove_reader(fd)
    for e in (w.ea, w.eb):
        assert e.sock is not None
        w.loop.remove_reader(e.sock.fileno())


def _wait_readable(fd: int) -> None:
    import select

    assert select.select([fd], [], [], DEADLINE)[0], "nothing arrived"


def test_sparse_traffic_reads_one_packet_then_busy_fds_drain() -> None:
    async def body(w: World) -> None:
        w.ta.peer.send(ipv4_udp(A_IN, B_IN, b"hello"))
        await until(lambda: len(w.tb.received) == 1, "first packet")
        _direct(w)
        for i in range(3):
            w.ta.peer.send(ipv4_udp(A_IN, B_IN, b"p%d" % i))
        rx, batches = w.ea.stats.tun_rx, w.ea.stats.tun_rx_batches
        w.ea._tun_last = 0.0  # the previous wake-up was long ago: sparse traffic
        w.ea._tun_readable()
        assert w.ea.stats.tun_rx == rx + 1  # one read, the rest left for the next wake-up
        w.ea._tun_readable()  # woken again at once: busy, drains what is queued
        assert w.ea.stats.tun_rx == rx + 3
        assert w.ea.stats.tun_rx_batches == batches + 2
        w.ea.lazy_drain = False
        w.ea._tun_last = 0.0
        for i in range(2):
            w.ta.peer.send(ipv4_udp(A_IN, B_IN, b"q%d" % i))
        w.ea._tun_readable()  # switched off: always drains
        assert w.ea.stats.tun_rx == rx + 5
        assert w.eb.sock is not None
        while w.eb.stats.udp_rx < 1 + 5:
            _wait_readable(w.eb.sock.fileno())
            w.eb._udp_readable()
        w.tb.drain()
        assert [p[-2:] for p in w.tb.received[1:]] == [b"p0", b"p1", b"p2", b"q0", b"q1"]

    run(body, thread=False)  # the loop's wake-ups


def test_answer_queued_on_the_tun_goes_out_in_the_same_wake_up() -> None:
    async def body(w: World) -> None:
        w.ta.peer.send(ipv4_udp(A_IN, B_IN, b"hello"))
        await until(lambda: len(w.tb.received) == 1 and len(w.ta.received) == 0, "first")
        _direct(w)
        assert w.eb.sock is not None and w.ea.sock is not None
        w.ta.peer.send(ipv4_udp(A_IN, B_IN, b"ping"))
        w.ea._tun_readable()
        _wait_readable(w.eb.sock.fileno())
        w.tb.peer.send(ipv4_udp(B_IN, A_IN, b"pong"))  # b's answer, queued on its TUN
        tun_rx, udp_tx = w.eb.stats.tun_rx, w.eb.stats.udp_tx
        w.eb._udp_last = 0.0  # sparse traffic (a busy socket leaves the TUN to its wake-up)
        w.eb._udp_readable()  # one wake-up: the ping written, the pong read and sent
        assert w.eb.stats.tun_rx == tun_rx + 1 and w.eb.stats.udp_tx == udp_tx + 1
        _wait_readable(w.ea.sock.fileno())
        w.ea._udp_readable()
        w.ta.drain()
        assert w.ta.received == [ipv4_udp(B_IN, A_IN, b"pong")]
        w.eb.tun_peek = False  # switched off: the answer waits for the TUN's own wake-up
        w.ta.peer.send(ipv4_udp(A_IN, B_IN, b"ping2"))
        w.ea._tun_readable()
        _wait_readable(w.eb.sock.fileno())
        w.tb.peer.send(ipv4_udp(B_IN, A_IN, b"pong2"))
        w.eb._udp_last = 0.0
        w.eb._udp_readable()
        assert w.eb.stats.tun_rx == tun_rx + 1

    run(body, thread=False)  # the loop's wake-ups


def test_a_removed_peer_leaves_the_thread_s_tables_without_waiting_for_a_timer() -> None:
    # a trust reload removes a member with no action and no timer run after it: the thread
    # (the default path where it is built) must stop delivering that member's traffic on the
    # loop's next iteration, not whenever the Device's next timer is due (seconds later)
    async def body(w: World) -> None:
        w.ta.peer.send(ipv4_udp(A_IN, B_IN, b"first"))
        await until(lambda: len(w.tb.received) == 1, "first packet")
        path = "thread" if datapath_thread.available() else "loop"
        assert f"datapath={path}" in w.eb.describe_offloads()
        w.db.remove_peer(w.ka.public_key)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        w.ta.peer.send(ipv4_udp(A_IN, B_IN, b"after removal"))
        await until(lambda: w.db.counters.unknown_index >= 1, "the drop of the removed peer's")
        assert len(w.tb.received) == 1

    run(body)
