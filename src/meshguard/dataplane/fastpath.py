"""The data plane's batched inner loops: a C extension when built, else pure Python.

    from meshguard.dataplane import fastpath as fp
    c = fp.Cipher(key)                                   # once per transport key
    n = fp.segment_count(read)                           # packets one TUN read yields
    data, seg, count = fp.seal_segments(c, receiver, first_counter, read)
    end, results = fp.open_batch(c, gro_buffer, seg, receiver, offset)
    buffers = fp.coalesce(packets)                       # virtio-net writes for the TUN

`read` is what a TUN opened with IFF_VNET_HDR returns (10-byte virtio-net header + packet;
with `vnet=False` a plain IP packet). `seal_segments` splits it like
`offload.split_tun_read` (TSO/USO split with every IP/TCP/UDP fix-up, partial checksums
completed), pads each packet to 16 bytes and seals it as a WireGuard transport message for
counters first, first+1, ...; the messages are concatenated, each `seg` bytes except a shorter
last one, which is exactly what one UDP GSO send (UDP_SEGMENT = seg) carries.

`open_batch` opens consecutive transport messages addressed to `receiver`, starting at byte
`offset` of a GRO buffer cut every `seg_size` bytes (0: the whole buffer is one datagram), and
stops at the first datagram that is not one (another receiver index, a handshake message, a
short datagram): `end` is the byte offset where it stopped. One result per message:
(counter, status, packet, source address, wire length) with status OK (packet = the inner IP
packet without padding), KEEPALIVE (b""), BAD_AUTH or BAD_INNER (packet None). The replay
window stays with the caller (wireguard/keypair.py): it runs `replay.accept(counter)` in order
on the authenticated results, and classifies a BAD_AUTH result as a replay when
`replay.check(counter)` fails at that point, which gives the same verdicts and counters as
checking before decrypting, packet by packet (the only difference: a replayed packet is
decrypted before being dropped, the same work a forged packet costs).

`coalesce` is `offload.coalesce`. Malformed reads raise ValueError (OffloadError in Python).

C only (None with the pure Python implementation, whose engine reads datagram by datagram and
leaves every check to the Device): `HandshakeGuard`, the twin of wireguard/cookie.py's, and
`recv_batch(fd, limit, guard, now)`, one recvmmsg of up to `limit` datagrams (GRO trains
included) that runs the guard on each handshake message: refused ones are counted in the guard
(`take_counts`), cookie replies are sent at once from C, and everything else comes back as
(data, seg, raw sockaddr, admitted) items; `admitted` marks a handshake message the guard
passed (the engine hands it on with a ticket, so the Device does not check it twice).

The C module is used when importable unless MESHGUARD_PURE_PYTHON=1; `IMPLEMENTATION` says
which one is active ("c" or "python"); `python_impl()` and `c_impl()` return either module-like
namespace for tests.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from meshguard.crypto.aead import TransportCipher
from meshguard.dataplane import offload
from meshguard.dataplane.vnet import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    VNET_HDR_LEN,
    unpack_hdr_from,
)
from meshguard.wireguard.device import inner_packet

Buffer = bytes | bytearray | memoryview

OK = 0
KEEPALIVE = 1
BAD_AUTH = 2
BAD_INNER = 3

_HEADER = struct.Struct("<IIQ")
_NONCE = struct.Struct("<4xQ")
_U16 = struct.Struct("!H")
_ZEROS = bytes(16)
_TYPE4 = b"\x04\x00\x00\x00"


class PyCipher:
    """ChaCha20-Poly1305 under one transport key (`cryptography`), the C Cipher's twin."""

    __slots__ = ("_aead", "_tc")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("ChaCha20-Poly1305 key must be 32 bytes")
        self._tc = TransportCipher(bytes(key))
        self._aead = self._tc.aead

    def __repr__(self) -> str:
        return "Cipher(<redacted>)"

    def seal(self, counter: int, plaintext: Buffer) -> bytes:
        return self._tc.seal(counter, bytes(plaintext))

    def open(self, counter: int, ciphertext: Buffer) -> bytes | None:
        return self._tc.open_or_none(counter, bytes(ciphertext))


def py_checksum(data: Buffer, initial: int = 0) -> int:
    if initial < 0:
        raise ValueError("initial must not be negative")
    return offload.checksum(data, initial)


def _check_read(buf: Buffer) -> None:
    """The stricter checks of the C version, so both reject the same malformed reads."""
    if len(buf) < VNET_HDR_LEN:
        raise offload.OffloadError("short read from a vnet-hdr TUN")
    flags, gso_type, _hl, _size, cstart, _coff = unpack_hdr_from(buf)
    gso = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if gso == VIRTIO_NET_HDR_GSO_NONE:
        return
    n = len(buf) - VNET_HDR_LEN
    if n < 20:
        raise offload.OffloadError("GSO packet too short")
    ver = buf[VNET_HDR_LEN] >> 4
    if ver not in (4, 6):
        raise offload.OffloadError("GSO packet is neither IPv4 nor IPv6")
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        l4 = cstart
    else:
        l4 = (buf[VNET_HDR_LEN] & 0x0F) * 4 if ver == 4 else 40
    if (gso, ver) in ((VIRTIO_NET_HDR_GSO_TCPV4, 6), (VIRTIO_NET_HDR_GSO_TCPV6, 4)):
        raise offload.OffloadError("GSO type does not match the IP version")
    if ver == 6 and (n < 40 or l4 < 40):
        raise offload.OffloadError("IPv6 GSO packet with a short header")
    if l4 & 1:
        raise offload.OffloadError("odd transport header offset")


def _split(buf: Buffer, vnet: bool) -> list[bytes]:
    if not vnet:
        return [bytes(buf)]
    _check_read(buf)
    return offload.split_tun_read(buf)


def py_segment_count(buf: Buffer, vnet: bool = True) -> int:
    if not vnet:
        return 1
    _check_read(buf)
    flags, gso_type, _hl, size, cstart, _coff = unpack_hdr_from(buf)
    gso = gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if gso == VIRTIO_NET_HDR_GSO_NONE:
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and cstart + _coff + 2 > len(buf) - VNET_HDR_LEN:
            raise offload.OffloadError("checksum offsets outside the packet")
        return 1
    if gso not in (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
                   VIRTIO_NET_HDR_GSO_UDP_L4):
        raise offload.OffloadError(f"unsupported GSO type {gso_type}")
    # the header checks of offload.segment, without building the packets
    pkt = memoryview(buf)[VNET_HDR_LEN:]
    n = len(pkt)
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        l4 = cstart
    else:
        l4 = (pkt[0] & 0x0F) * 4 if pkt[0] >> 4 == 4 else 40
    if gso == VIRTIO_NET_HDR_GSO_UDP_L4:
        if l4 < 20 or l4 + 8 > n:
            raise offload.OffloadError("UDP header outside the packet")
        hl = l4 + 8
    else:
        if l4 < 20 or l4 + 20 > n:
            raise offload.OffloadError("TCP header outside the packet")
        hl = l4 + (pkt[l4 + 12] >> 4) * 4
        if hl < l4 + 20 or hl > n:
            raise offload.OffloadError("bad TCP data offset")
    if size <= 0:
        raise offload.OffloadError("GSO packet without gso_size")
    count: int = max(1, -(-(n - hl) // size))
    return count


def py_seal_segments(
    cipher: PyCipher, receiver: int, first: int, buf: Buffer, vnet: bool = True
) -> tuple[bytes, int, int]:
    packets = _split(buf, vnet)
    aead = cipher._aead
    out: list[bytes] = []
    counter = first
    for pkt in packets:
        pad = -len(pkt) & 15
        if pad:
            pkt = pkt + _ZEROS[:pad]
        out.append(_HEADER.pack(4, receiver, counter) + aead.encrypt(_NONCE.pack(counter), pkt,
                                                                     None))
        counter += 1
    return b"".join(out), len(out[0]), len(out)


def py_open_batch(
    cipher: PyCipher, buf: Buffer, seg_size: int, receiver: int, offset: int = 0
) -> tuple[int, list[tuple[int, int, bytes | None, bytes | None, int]]]:
    mv = memoryview(buf)
    n = len(mv)
    pos = max(offset, 0)
    results: list[tuple[int, int, bytes | None, bytes | None, int]] = []
    unpack = _HEADER.unpack_from
    while pos < n:
        dlen = n - pos
        if 0 < seg_size < dlen:
            dlen = seg_size
        if dlen < 32 or dlen - 32 > 65536 or mv[pos : pos + 4] != _TYPE4:
            break
        _, rcv, counter = unpack(mv, pos)
        if rcv != receiver:
            break
        pt = cipher.open(counter, mv[pos + 16 : pos + dlen])
        pos += dlen
        if pt is None:
            results.append((counter, BAD_AUTH, None, None, dlen))
            continue
        if not pt:
            results.append((counter, KEEPALIVE, b"", None, dlen))
            continue
        inner = inner_packet(pt)
        if inner is None:
            results.append((counter, BAD_INNER, None, None, dlen))
        else:
            results.append((counter, OK, inner[0], inner[1], dlen))
    return pos, results


def py_coalesce(packets: Sequence[Buffer], verify: bool = True) -> list[bytes]:
    return offload.coalesce(packets, verify=verify)


def python_impl() -> Any:
    return SimpleNamespace(
        name="python", Cipher=PyCipher, checksum=py_checksum, segment_count=py_segment_count,
        seal_segments=py_seal_segments, open_batch=py_open_batch, coalesce=py_coalesce,
        HandshakeGuard=None, recv_batch=None)


def c_impl() -> Any | None:
    """The C module, or None when it is not built (or cannot load, e.g. no libcrypto)."""
    try:
        from meshguard.dataplane import _fastpath  # type: ignore[attr-defined]
    except ImportError:
        return None
    _fastpath.name = "c"
    return _fastpath


def _select() -> Any:
    if os.environ.get("MESHGUARD_PURE_PYTHON", "") not in ("", "0"):
        return python_impl()
    return c_impl() or python_impl()


_impl = _select()
IMPLEMENTATION: str = _impl.name
Cipher: Any = _impl.Cipher
checksum: Any = _impl.checksum
segment_count: Any = _impl.segment_count
seal_segments: Any = _impl.seal_segments
open_batch: Any = _impl.open_batch
coalesce: Any = _impl.coalesce
HandshakeGuard: Any = getattr(_impl, "HandshakeGuard", None)
recv_batch: Any = getattr(_impl, "recv_batch", None)

__all__ = [
    "BAD_AUTH",
    "BAD_INNER",
    "IMPLEMENTATION",
    "KEEPALIVE",
    "OK",
    "Cipher",
    "HandshakeGuard",
    "PyCipher",
    "c_impl",
    "checksum",
    "coalesce",
    "open_batch",
    "python_impl",
    "recv_batch",
    "seal_segments",
    "segment_count",
]
