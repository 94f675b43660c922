"""UDP segmentation offload (GSO) on send and receive offload (GRO), with plain fallbacks.

Send: `UdpBatchSender.send(datagrams, addr)` groups runs of equal-size datagrams (the last of a
run may be shorter) into one `sendmsg` with a `UDP_SEGMENT` control message; the kernel (or the
NIC) cuts the buffer back into the original datagrams. Runs of one, and every datagram when GSO
is unavailable, go out with `sendto`.

Receive: with `UDP_GRO` enabled the kernel may deliver several same-size datagrams from one
sender in one read, telling the segment size in a `UDP_GRO` control message. Python has no
`recvmmsg`, so this is how one syscall moves many datagrams. `GroReceiver.recv()` reads into a
preallocated buffer and returns memoryview slices, one per datagram (valid until the next recv).

Option numbers Python 3.11 does not name: SOL_UDP 17, UDP_SEGMENT 103, UDP_GRO 104,
SO_SNDBUFFORCE 32, SO_RCVBUFFORCE 33 (Linux).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

Buffer = bytes | bytearray | memoryview
# what the socket family's sendto/recvfrom use (None: a connected socket)
Address = tuple[str, int] | tuple[str, int, int, int] | None

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

UDP_MAX_SEGMENTS = 64  # the kernel's per-send limit (raised to 128 in 6.x; 64 is safe)
GSO_MAX_BYTES = 65000  # payload bytes per GSO send, below the 64 KB IP limit for v4 and v6
GRO_BUF = 65536 + 4096

_U16 = struct.Struct("=H")
_I32 = struct.Struct("=i")
_GRO_ANC = socket.CMSG_SPACE(_I32.size)


@dataclass(frozen=True, slots=True)
class UdpOffloadSupport:
    gso: bool
    gro: bool


def probe_gso(sock: socket.socket) -> bool:
    """True when the kernel knows UDP_SEGMENT on this socket."""
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def enable_gro(sock: socket.socket) -> bool:
    """Turn UDP_GRO on; False when the kernel refuses it."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def set_buffer_sizes(sock: socket.socket, size: int = 4 << 20) -> tuple[int, int]:
    """Raise send and receive buffers to `size` bytes, past the sysctl caps when privileged
    (SO_*BUFFORCE), else as far as SO_*BUF allows. Returns the (send, receive) sizes in effect
    (the kernel reports twice what was asked, to account for its bookkeeping)."""
    for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    )


def setup_socket(sock: socket.socket, buffer_size: int = 4 << 20) -> UdpOffloadSupport:
    """Size the buffers, enable GRO and probe GSO on a UDP socket."""
    set_buffer_sizes(sock, buffer_size)
    return UdpOffloadSupport(gso=probe_gso(sock), gro=enable_gro(sock))


def gso_runs(
    sizes: Sequence[int], max_segments: int = UDP_MAX_SEGMENTS, max_bytes: int = GSO_MAX_BYTES
) -> list[tuple[int, int]]:
    """Split datagram sizes into [start, end) runs that one GSO send can carry: every datagram
    of a run the size of the first, except the last, which may be shorter (and not empty);
    at most `max_segments` datagrams and `max_bytes` bytes."""
    runs: list[tuple[int, int]] = []
    n = len(sizes)
    i = 0
    while i < n:
        seg = sizes[i]
        j = i + 1
        total = seg
        while j < n and j - i < max_segments:
            s = sizes[j]
            if s > seg or s == 0 or total + s > max_bytes:
                break
            total += s
            j += 1
            if s < seg:
                break
        runs.append((i, j))
        i = j
    return runs


class UdpBatchSender:
    """Sends batches of datagrams to one address with as few syscalls as possible.

    `gso=None` probes the socket. GSO is switched off for good when the kernel rejects it
    with EIO/EOPNOTSUPP/ENOPROTOOPT (e.g. no checksum offload on the route); a run it rejects
    with EINVAL/EMSGSIZE is resent datagram by datagram.
    """

    __slots__ = ("gso", "sock", "stats_dropped", "stats_syscalls")

    def __init__(self, sock: socket.socket, gso: bool | None = None) -> None:
        self.sock = sock
        self.gso = probe_gso(sock) if gso is None else gso
        self.stats_syscalls = 0
        self.stats_dropped = 0

    def send(self, datagrams: Sequence[Buffer], addr: Address = None) -> int:
        """Send `datagrams` in order to `addr` (None on a connected socket).

        Returns how many were handed to the kernel. Stops early on EAGAIN (the rest count as
        dropped); datagrams refused with ECONNREFUSED (a connected socket whose peer is down)
        count as dropped too. Other OSErrors propagate.
        """
        if not self.gso or len(datagrams) < 2:
            return self._send_plain(datagrams, addr)
        sent = 0
        sendmsg = self.sock.sendmsg
        for i, j in gso_runs([len(d) for d in datagrams]):
            if j - i == 1:
                n = self._send_plain(datagrams[i:j], addr)
                sent += n
                if n == 0:
                    self.stats_dropped += len(datagrams) - j
                    return sent
                continue
            seg = len(datagrams[i])
            cmsg = [(SOL_UDP, UDP_SEGMENT, _U16.pack(seg))]
            try:
                self.stats_syscalls += 1
                if addr is None:
                    sendmsg(datagrams[i:j], cmsg)
                else:
                    sendmsg(datagrams[i:j], cmsg, 0, addr)
            except BlockingIOError:
                self.stats_dropped += len(datagrams) - i
                return sent
            except ConnectionRefusedError:
                self.stats_dropped += j - i
                continue
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT):
                    self.gso = False
                elif exc.errno not in (errno.EINVAL, errno.EMSGSIZE):
                    raise
                n = self._send_plain(datagrams[i:j], addr)
                sent += n
                if n < j - i:
                    self.stats_dropped += len(datagrams) - j
                    return sent
                continue
            sent += j - i
        return sent

    def _send_plain(self, datagrams: Sequence[Buffer], addr: Address) -> int:
        sock = self.sock
        sent = 0
        for k, d in enumerate(datagrams):
            self.stats_syscalls += 1
            try:
                if addr is None:
                    sock.send(d)
                else:
                    sock.sendto(d, addr)
            except BlockingIOError:
                self.stats_dropped += len(datagrams) - k
                return sent
            except ConnectionRefusedError:
                self.stats_dropped += 1
                continue
            sent += 1
        return sent


def split_gro(data: memoryview, gso_size: int) -> list[memoryview]:
    """Cut a GRO read into its datagrams (all gso_size bytes, the last possibly shorter)."""
    n = len(data)
    if gso_size <= 0 or gso_size >= n:
        return [data]
    return [data[i : i + gso_size] for i in range(0, n, gso_size)]


class GroReceiver:
    """Reads from a UDP socket with UDP_GRO (when the kernel allows it) into one reusable
    buffer. `recv()` returns (datagrams, source address); the memoryviews are only valid
    until the next `recv()`. Raises what `recvmsg_into` raises (BlockingIOError when a
    non-blocking socket is empty, ConnectionRefusedError after an ICMP error)."""

    __slots__ = ("_buf", "_mv", "gro", "sock", "stats_truncated")

    def __init__(self, sock: socket.socket, enable: bool = True, bufsize: int = GRO_BUF) -> None:
        self.sock = sock
        self.gro = enable_gro(sock) if enable else False
        self._buf = bytearray(bufsize)
        self._mv = memoryview(self._buf)
        self.stats_truncated = 0

    def recv(self) -> tuple[list[memoryview], Address]:
        while True:
            n, anc, flags, addr = self.sock.recvmsg_into([self._buf], _GRO_ANC)
            if flags & socket.MSG_TRUNC:
                self.stats_truncated += 1
                continue
            data = self._mv[:n]
            for level, kind, value in anc:
                if level == SOL_UDP and kind == UDP_GRO and len(value) >= 2:
                    size = _I32.unpack(value[:4])[0] if len(value) >= 4 else _U16.unpack(value)[0]
                    return split_gro(data, size), addr
            return [data], addr
