"""Fuzz targets for the C data-path thread (testing/fuzz.py, docs/performance.md#data-path-thread):
hostile TUN reads and hostile decrypted packets through a real `DataPath` on a socketpair TUN
and loopback UDP sockets.

    datapath_tun   the input is one TUN read (virtio-net header + packet: TSO/USO plans,
                   checksum offsets, routes); the thread must read it and go on
    datapath_udp   the input is a list of inner packets ((u16 length, bytes) records), each
                   sealed for the thread's keys and sent from the peer's endpoint (the inner
                   packet and source checks, coalescing into TUN super-packets)

A memory error in the thread kills the process (a crash for the harness); a thread that stops
taking input is a RoundTripError.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from typing import TYPE_CHECKING

from meshguard.dataplane import datapath_thread, fastpath
from meshguard.dataplane.udp_io import raw_sockaddr
from meshguard.testing.fuzz_engine import RoundTripError, Target
from meshguard.testing.fuzz_fastpath import _fastpath_seeds, _pack_list, _packet_list
from meshguard.testing.fuzz_mss import syn_packet
from meshguard.wire import wireguard

if TYPE_CHECKING:
    from meshguard.dataplane._fastpath import DataPath

_SEND_KEY, _RECV_KEY = bytes(range(32)), bytes(range(32, 64))
_LOCAL, _REMOTE = 0x0A0B0C0D, 0x01020304
_PEER_NET = bytes([10, 99, 0, 0])  # the peer's allowed IPs: 10.99.0.0/16 (the seeds' packets)
_WAIT = 5.0
_CLAMP_MTU = 1216


class _Rig:
    """One DataPath (virtio-net headers, TSO) with one peer whose allowed IPs are 10.99/16."""

    def __init__(self) -> None:
        from meshguard.dataplane._fastpath import DataPath, KeyState

        self.tun, self.tun_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.remote = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.remote.bind(("127.0.0.1", 0))
        for s in (self.tun_peer, self.remote):
            s.setblocking(False)
        self.ks = KeyState(_SEND_KEY, _RECV_KEY, _LOCAL, _REMOTE, time.monotonic(), 0)
        self.dp: DataPath = DataPath(self.tun.fileno(), self.udp.fileno(), True, True, False)
        # the peer's TCP SYNs are clamped both ways (dataplane/_fastpath.c clamp_mss)
        self.dp.set_tables([(raw_sockaddr(socket.AF_INET, self.remote.getsockname()), self.ks,
                             _CLAMP_MTU)], [(_LOCAL, self.ks, 0, False)], [(_PEER_NET, 16, 0)])
        self.dp.set_clock(0.0)
        self.dp.start()
        c = fastpath.c_impl()
        assert c is not None
        self.cipher = c.Cipher(_RECV_KEY)
        self.counter = 0

    def wait(self, counter: str, n: int) -> None:
        """Until the thread counted n more `counter` (it took the input), then everything it
        produced is thrown away."""
        end = time.monotonic() + _WAIT
        got = 0
        while got < n:
            if time.monotonic() > end:
                raise RoundTripError(f"the data-path thread took {got} of {n} ({counter})")
            got += self.dp.take_stats().get(counter, 0)
            if got < n:
                time.sleep(0.0002)
        for s in (self.tun_peer, self.remote):
            with contextlib.suppress(BlockingIOError):
                while True:
                    s.recv(1 << 17)
        self.dp.drain()


def datapath_targets() -> list[Target]:
    if not datapath_thread.available():
        return []
    rig: list[_Rig] = []

    def get() -> _Rig:
        if not rig:
            rig.append(_Rig())
        return rig[0]

    def tun_read(data: bytes) -> None:
        r = get()
        r.tun_peer.send(data)
        r.wait("tun_rx", 1)

    def datagrams(data: bytes) -> None:
        r = get()
        pkts = _packet_list(data)
        dest = r.udp.getsockname()
        for p in pkts:
            msg = wireguard.transport_header(_LOCAL, r.counter) + r.cipher.seal(
                r.counter, p + bytes(-len(p) % 16))
            r.counter += 1
            r.remote.sendto(msg, dest)
        r.wait("udp_rx", len(pkts))

    plain = [*_fastpath_seeds(), _syn_list()]
    tun_seeds = [bytes(10) + p for s in plain for p in _packet_list(s)]
    tun_seeds += [_gso_read(p) for s in plain[:2] for p in _packet_list(s)[:1]]
    return [Target("datapath_tun", tun_seeds, tun_read, max_len=65545),
            Target("datapath_udp", plain, datagrams, max_len=8192)]


def _syn_list() -> bytes:
    """TCP SYNs from the peer's network with MSS options, as a packet list input."""
    return _pack_list(syn_packet(False, o) for o in (b"\x02\x04\x05\xb4",
                                                      b"\x01\x02\x04\xff\xff\x00\x00\x00"))


def _gso_read(pkt: bytes) -> bytes:
    """A TSO read of a TCP packet: virtio-net header asking for segments of 16 bytes."""
    v6 = pkt[0] >> 4 == 6
    l4 = 40 if v6 else 20
    hl = l4 + (pkt[l4 + 12] >> 4) * 4
    return struct.pack("<BBHHHH", 1, 4 if v6 else 1, hl, 16, l4, 16) + pkt
