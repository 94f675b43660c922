"""Shared helpers for the data-plane tests.

Packet builders with a word-by-word reference checksum, independent of the code under test
(used by test_offload.py and test_fastpath.py), and the two-engine loopback world: two Devices,
two Engines, SOCK_SEQPACKET pairs standing in for TUNs, conditions awaited with deadlines
(test_engine.py, test_engine_fastpath.py, test_handshake_flood.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import Awaitable, Callable

from meshguard.crypto.keys import X25519PrivateKey
from meshguard.dataplane.engine import Engine
from meshguard.dataplane.offload import (
    TCP_ACK,
    split_tun_read,
)
from meshguard.dataplane.vnet import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VirtioNetHdr,
)
from meshguard.testing.rng import SeededRng
from meshguard.wireguard.device import Device

V4A, V4B = ipaddress.IPv4Address("10.1.2.3"), ipaddress.IPv4Address("192.168.7.9")
V6A, V6B = ipaddress.IPv6Address("fd00::1"), ipaddress.IPv6Address("fd12:3456::abcd")


# -- reference implementation ---------------------------------------------------------------


def ref_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ref_csum(data: bytes) -> int:
    return ~ref_sum(data) & 0xFFFF


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def ref_l4_ok(pkt: bytes) -> bool:
    if pkt[0] >> 4 == 4:
        ihl = (pkt[0] & 15) * 4
        if ref_sum(pkt[:ihl]) != 0xFFFF:
            return False
        src, dst, proto, l4 = pkt[12:16], pkt[16:20], pkt[9], pkt[ihl:]
    else:
        src, dst, proto, l4 = pkt[8:24], pkt[24:40], pkt[6], pkt[40:]
    return ref_sum(pseudo(src, dst, proto, len(l4)) + l4) == 0xFFFF


def ip_header(src: bytes, dst: bytes, proto: int, l4_len: int, *, ip_id: int = 1, ttl: int = 64,
              tos: int = 0, df: bool = True) -> bytes:
    if len(src) == 4:
        h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + l4_len, ip_id,
                                  0x4000 if df else 0, ttl, proto, 0, src, dst))
        struct.pack_into("!H", h, 10, ref_csum(bytes(h)))
        return bytes(h)
    return struct.pack("!IHBB16s16s", (6 << 28) | (tos << 20) | 0x12345, l4_len, proto, ttl,
                       src, dst)


def tcp_packet(src: bytes, dst: bytes, seq: int, payload: bytes, *, flags: int = TCP_ACK,
               sport: int = 40000, dport: int = 5201, ack: int = 777, window: int = 512,
               options: bytes = b"", ip_id: int = 1, ttl: int = 64, good: bool = True) -> bytes:
    doff = (20 + len(options)) // 4
    th = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, doff << 4,
                               flags, window, 0, 0) + options)
    seg = bytes(th) + payload
    c = ref_csum(pseudo(src, dst, 6, len(seg)) + seg)
    if not good:
        c ^= 0x0101
    struct.pack_into("!H", th, 16, c)
    return ip_header(src, dst, 6, len(seg), ip_id=ip_id, ttl=ttl) + bytes(th) + payload


def udp_packet(src: bytes, dst: bytes, payload: bytes, sport: int = 1000,
               dport: int = 2000) -> bytes:
    uh = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0))
    c = ref_csum(pseudo(src, dst, 17, 8 + len(payload)) + bytes(uh) + payload) or 0xFFFF
    struct.pack_into("!H", uh, 6, c)
    return ip_header(src, dst, 17, 8 + len(payload)) + bytes(uh) + payload


def icmp_echo(src: bytes, dst: bytes, payload: bytes = b"ping") -> bytes:
    """An ICMP (IPv4) or ICMPv6 echo request."""
    v6 = len(src) == 16
    msg = bytearray(struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, 1, 1) + payload)
    pre = pseudo(src, dst, 58, len(msg)) if v6 else b""
    struct.pack_into("!H", msg, 2, ref_csum(pre + bytes(msg)))
    return ip_header(src, dst, 58 if v6 else 1, len(msg)) + bytes(msg)


def partial(pkt: bytes, l4: int, proto: int, csum_offset: int) -> bytes:
    """What the kernel hands over with NEEDS_CSUM: the pseudo-header sum in the checksum field."""
    out = bytearray(pkt)
    src, dst = (out[12:16], out[16:20]) if l4 == 20 else (out[8:24], out[24:40])
    struct.pack_into("!H", out, l4 + csum_offset,
                     ref_sum(pseudo(bytes(src), bytes(dst), proto, len(out) - l4)))
    return bytes(out)


def gso_super(src: bytes, dst: bytes, seq: int, payload: bytes, mss: int, *, flags: int = TCP_ACK,
              options: bytes = b"", ip_id: int = 100) -> tuple[VirtioNetHdr, bytes]:
    """A TSO super-packet as the kernel gives it to a vnet-hdr TUN reader."""
    pkt = tcp_packet(src, dst, seq, payload, flags=flags, options=options, ip_id=ip_id)
    l4 = 20 if len(src) == 4 else 40
    hl = l4 + 20 + len(options)
    gso = VIRTIO_NET_HDR_GSO_TCPV4 if l4 == 20 else VIRTIO_NET_HDR_GSO_TCPV6
    return (VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso, hl, mss, l4, 16),
            partial(pkt, l4, 6, 16))


def tcp_fields(pkt: bytes) -> tuple[int, int, bytes]:
    l4 = 20 if pkt[0] >> 4 == 4 else 40
    hl = l4 + (pkt[l4 + 12] >> 4) * 4
    return struct.unpack_from("!I", pkt, l4 + 4)[0], pkt[l4 + 13], pkt[hl:]


def resegment(buf: bytes) -> list[bytes]:
    """Undo `coalesce` output the way the receiving kernel would: split GSO, keep the rest."""
    return split_tun_read(buf)


# -- two engines on loopback -----------------------------------------------------------------

A_IN, B_IN = "10.0.0.1", "10.0.0.2"
DEADLINE = 10.0


def ipv4_udp(src: str, dst: str, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0) + payload
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(udp),
        0,
        0,
        64,
        17,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return hdr + udp


class FakeTun:
    """A SOCK_SEQPACKET pair: the engine gets `engine_fd`, the test reads/writes `peer`."""

    def __init__(self) -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        a.setblocking(False)
        b.setblocking(False)
        for sock in (a, b):  # room for a burst of a few hundred packets
            try:
                sock.setsockopt(socket.SOL_SOCKET, 32, 4 << 20)  # SO_SNDBUFFORCE (root)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self._engine_side, self.peer = a, b
        self.engine_fd = a.fileno()
        self.received: list[bytes] = []

    def drain(self) -> None:
        while True:
            try:
                self.received.append(self.peer.recv(65535))
            except BlockingIOError:
                return

    def close(self) -> None:
        self._engine_side.close()
        self.peer.close()


class World:
    """Two engines on loopback, each on a FakeTun. `thread`: False runs the loop's path (the
    tests of its batching), None the engine's default (the data-path thread when built)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, outer: str = "127.0.0.1",
                 thread: bool | None = None) -> None:
        rng = SeededRng(5)
        self.ka = X25519PrivateKey.generate(rng.bytes(32))
        self.kb = X25519PrivateKey.generate(rng.bytes(32))
        self.da = Device(SeededRng(1), self.ka)
        self.db = Device(SeededRng(2), self.kb)
        self.ta, self.tb = FakeTun(), FakeTun()
        self.ea = Engine(self.da, self.ta.engine_fd)
        self.eb = Engine(self.db, self.tb.engine_fd)
        if thread is not None:
            for e in (self.ea, self.eb):
                e.use_thread = thread and e.use_thread
        self.ea.bind(0)
        self.eb.bind(0)
        self.pb = self.da.add_peer(self.kb.public_key)
        self.pa = self.db.add_peer(self.ka.public_key)
        self.pb.endpoint = (outer, self.eb.port)
        self.pa.endpoint = (outer, self.ea.port)
        self.da.set_allowed_ips(self.pb, [f"{B_IN}/32"])
        self.db.set_allowed_ips(self.pa, [f"{A_IN}/32"])
        for t in (self.ta, self.tb):
            loop.add_reader(t.peer.fileno(), t.drain)
        self.ea.start(loop)
        self.eb.start(loop)
        self.loop = loop

    def close(self) -> None:
        for t in (self.ta, self.tb):
            self.loop.remove_reader(t.peer.fileno())
        self.ea.close()
        self.eb.close()
        self.ta.close()
        self.tb.close()


async def until(pred: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    """Yield to the loop until pred() holds (or fail after `deadline` seconds); event-driven,
    the loop does the I/O."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not pred():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        fut = loop.create_future()
        loop.call_later(0.001, fut.set_result, None)
        await fut


def run(body: Callable[[World], Awaitable[None]], outer: str = "127.0.0.1",
        thread: bool | None = None) -> None:
    async def main() -> None:
        w = World(asyncio.get_running_loop(), outer, thread)
        try:
            await body(w)
        finally:
            w.close()

    asyncio.run(main())


# Whether this kernel offers UDP GSO and GRO is decided here, by raw setsockopt calls, never by
# the code under test (its probes are checked against these). UDP_SEGMENT and UDP_GRO are the
# values of include/uapi/linux/udp.h; Linux has them since 4.18 and 5.0.
_SOL_UDP, _UDP_SEGMENT, _UDP_GRO = 17, 103, 104


def _kernel_accepts(family: int, option: int, value: int) -> bool:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.setsockopt(_SOL_UDP, option, value)
        except OSError:
            return False
    return True


def kernel_has_gso(family: int) -> bool:
    return _kernel_accepts(family, _UDP_SEGMENT, 1200)


def kernel_has_gro(family: int) -> bool:
    return _kernel_accepts(family, _UDP_GRO, 1)
