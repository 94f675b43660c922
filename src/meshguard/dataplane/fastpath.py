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

`PolicyFilter` is the C twin of dataplane/policy_filter.py's PyPolicyFilter (None with the
pure Python implementation).

Also C only, used by the engine's data-path thread (dataplane/datapath_thread.py): `KeyState`,
a keypair's atomic send counter, locked replay window and the thread's ciphers, and `DataPath`,
the thread itself.

The C module is used when importable unless MESHGUARD_PURE_PYTHON=1; `IMPLEMENTATION` says
which one is active ("c" or "python"), `PYTHON_REASON` why it is the pure Python one (for
`meshguard version`); `python_impl()` and `c_impl()` return either module-like namespace for
tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

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
from meshguard.wireguard.transport import (
    BAD_AUTH,
    BAD_INNER,
    HEADER,
    KEEPALIVE,
    OK,
    OpenResult,
    open_result,
    seal_batch,
)

try:
    import meshguard.dataplane._fastpath as _c

    _HAVE_C = True
    _C_MISSING = ""
except ModuleNotFoundError as exc:  # not built (no compiler or OpenSSL headers at install)
    _HAVE_C = False
    _C_MISSING = ("the C extension is not built" if exc.name == "meshguard.dataplane._fastpath"
                  else str(exc))
except ImportError as exc:  # built, but cannot load (e.g. no libcrypto)
    _HAVE_C = False
    _C_MISSING = f"the C extension does not load: {exc}"

if TYPE_CHECKING:
    from meshguard.dataplane._fastpath import HandshakeGuard as CHandshakeGuard
    from meshguard.dataplane._fastpath import PolicyFilter as CPolicyFilter

Buffer = bytes | bytearray | memoryview


_TYPE4 = b"\x04\x00\x00\x00"


class FastCipher(Protocol):
    """ChaCha20-Poly1305 under one transport key: PyCipher or the C Cipher."""

    def seal(self, counter: int, plaintext: Buffer) -> bytes: ...

    def open(self, counter: int, ciphertext: Buffer) -> bytes | None: ...


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
    cipher: FastCipher, receiver: int, first: int, buf: Buffer, vnet: bool = True
) -> tuple[bytes, int, int]:
    if not isinstance(cipher, PyCipher):
        raise TypeError("the Python seal_segments takes a PyCipher")
    out = seal_batch(cipher._aead, receiver, first, _split(buf, vnet))
    return b"".join(out), len(out[0]), len(out)


def py_open_batch(
    cipher: FastCipher, buf: Buffer, seg_size: int, receiver: int, offset: int = 0
) -> tuple[int, list[OpenResult]]:
    mv = memoryview(buf)
    n = len(mv)
    pos = max(offset, 0)
    results: list[OpenResult] = []
    unpack = HEADER.unpack_from
    while pos < n:
        dlen = n - pos
        if 0 < seg_size < dlen:
            dlen = seg_size
        if dlen < 32 or dlen - 32 > 65536 or mv[pos : pos + 4] != _TYPE4:
            break
        _, rcv, counter = unpack(mv, pos)
        if rcv != receiver:
            break
        results.append(open_result(counter, cipher.open(counter, mv[pos + 16 : pos + dlen]),
                                   dlen))
        pos += dlen
    return pos, results


def py_coalesce(packets: Sequence[Buffer], verify: bool = True) -> list[bytes]:
    return offload.coalesce(packets, verify=verify)


class _Checksum(Protocol):
    def __call__(self, data: Buffer, initial: int = 0, /) -> int: ...


class _SegmentCount(Protocol):
    def __call__(self, buf: Buffer, vnet: bool = True) -> int: ...


class _SealSegments(Protocol):
    def __call__(self, cipher: FastCipher, receiver: int, first: int, buf: Buffer,
                 vnet: bool = True) -> tuple[bytes, int, int]: ...


class _OpenBatch(Protocol):
    def __call__(self, cipher: FastCipher, buf: Buffer, seg_size: int, receiver: int,
                 offset: int = 0) -> tuple[int, list[OpenResult]]: ...


class _Coalesce(Protocol):
    def __call__(self, packets: Sequence[Buffer], verify: bool = True) -> list[bytes]: ...


RecvBatch = Callable[
    [int, int, "CHandshakeGuard | None", float, "Mapping[int, object] | None"],
    tuple[list[tuple[bytes, int, bytes, int]], int, int, int, int, int, int, int, int, int],
]


@dataclass(frozen=True)
class Impl:
    """One implementation of the fast path: its calls, by the names fastpath exports.

    A Cipher made by one implementation goes only to that implementation's seal_segments and
    open_batch (the C ones check its type)."""

    name: str
    Cipher: Callable[[bytes], FastCipher]
    checksum: _Checksum
    segment_count: _SegmentCount
    seal_segments: _SealSegments
    open_batch: _OpenBatch
    coalesce: _Coalesce
    HandshakeGuard: type[CHandshakeGuard] | None
    recv_batch: RecvBatch | None


def python_impl() -> Impl:
    return Impl(
        name="python", Cipher=PyCipher, checksum=py_checksum, segment_count=py_segment_count,
        seal_segments=py_seal_segments, open_batch=py_open_batch, coalesce=py_coalesce,
        HandshakeGuard=None, recv_batch=None)


def c_impl() -> Impl | None:
    """The C module, or None when it is not built (or cannot load, e.g. no libcrypto)."""
    if not _HAVE_C:
        return None
    return Impl(
        name="c", Cipher=_c.Cipher, checksum=_c.checksum, segment_count=_c.segment_count,
        # the C calls take the C Cipher only (they raise TypeError for any other object)
        seal_segments=cast(_SealSegments, _c.seal_segments),
        open_batch=cast(_OpenBatch, _c.open_batch),
        coalesce=_c.coalesce, HandshakeGuard=_c.HandshakeGuard, recv_batch=_c.recv_batch)


def _pure_python_asked() -> bool:
    return os.environ.get("MESHGUARD_PURE_PYTHON", "") not in ("", "0")


def _select() -> Impl:
    if _pure_python_asked():
        return python_impl()
    return c_impl() or python_impl()


_impl = _select()
IMPLEMENTATION: str = _impl.name
# why the pure Python implementation is in use ("" with the C one)
PYTHON_REASON: str = ("" if IMPLEMENTATION == "c" else
                      "MESHGUARD_PURE_PYTHON=1" if _pure_python_asked() else _C_MISSING)
Cipher = _impl.Cipher
checksum = _impl.checksum
segment_count = _impl.segment_count
seal_segments = _impl.seal_segments
open_batch = _impl.open_batch
coalesce = _impl.coalesce
HandshakeGuard = _impl.HandshakeGuard
recv_batch = _impl.recv_batch
# the C twin of wire/tcp_mss.clamp, for the tests and the fuzzer (None when not built)
c_clamp_mss: Callable[[Buffer, int, int, bool], bytes] | None = (
    _c.clamp_mss if _HAVE_C else None)
# the C policy filter (dataplane/_fastpath_policy.c) when the C implementation is in use, else
# None (the engine takes policy_filter.PyPolicyFilter); C_POLICY_FILTER whenever it is built
C_POLICY_FILTER: type[CPolicyFilter] | None = _c.PolicyFilter if _HAVE_C else None
PolicyFilter = C_POLICY_FILTER if IMPLEMENTATION == "c" else None

__all__ = [
    "BAD_AUTH",
    "BAD_INNER",
    "C_POLICY_FILTER",
    "IMPLEMENTATION",
    "KEEPALIVE",
    "OK",
    "PYTHON_REASON",
    "Cipher",
    "HandshakeGuard",
    "PolicyFilter",
    "PyCipher",
    "c_clamp_mss",
    "c_impl",
    "checksum",
    "coalesce",
    "open_batch",
    "python_impl",
    "recv_batch",
    "seal_segments",
    "segment_count",
]
