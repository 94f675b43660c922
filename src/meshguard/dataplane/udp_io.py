"""The engine's UDP socket: creation, addressing, and sending (plain and GSO batches).

`make_udp_socket` binds the dual-stack socket; `UdpSender` sends datagrams from it, caching
the socket address of each endpoint, and sends runs of equal-size sealed messages to one
endpoint as one UDP GSO sendmsg while the kernel accepts it (falling back to datagram by
datagram for good when it refuses). Errors are counted in EngineStats, never raised.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import sys
from dataclasses import asdict, dataclass

from meshguard.dataplane.ports import Datagram
from meshguard.sansio import Endpoint, map_host, unmap_host

__all__ = [
    "GRO_BUFFER",
    "SOL_UDP",
    "UDP_GRO",
    "UDP_SEGMENT",
    "EngineStats",
    "SockAddr",
    "UdpSender",
    "endpoint_cached",
    "endpoint_of_sockaddr",
    "make_udp_socket",
    "offload_default",
    "set_fwmark",
]

log = logging.getLogger("meshguard.dataplane.engine")

SOCKET_BUFFER = 4 * 1024 * 1024
SO_SNDBUFFORCE = 32  # not named in Python 3.11's socket module
SO_RCVBUFFORCE = 33
SO_MARK = 36
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
GSO_MAX_SEGMENTS = 64  # the kernel's per-send limit (UDP_MAX_SEGMENTS; 128 on newer kernels)
GSO_MAX_BYTES = 65000  # payload bytes per GSO send, below the 64 KB IP limit for v4 and v6
GRO_BUFFER = 65536 + 4096
_U16N = struct.Struct("=H")
_GSO_OFF = frozenset({errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT})
_NATIVE = sys.byteorder
_ADDR_CACHE_MAX = 4096

SockAddr = tuple[str, int] | tuple[str, int, int, int]
"""What sendto takes: (host, port) on an IPv4 socket, (host, port, flow, scope) on IPv6."""
Sealed = tuple[bytes, int, int, Endpoint]
"""A buffer of `count` sealed messages, each `seg` bytes but the last, for one endpoint."""


@dataclass
class EngineStats:
    udp_rx: int = 0
    udp_tx: int = 0
    tun_rx: int = 0
    tun_tx: int = 0
    udp_rx_batches: int = 0
    tun_rx_batches: int = 0
    udp_send_errors: int = 0
    udp_send_refused: int = 0
    udp_send_would_block: int = 0
    udp_recv_errors: int = 0
    tun_write_errors: int = 0
    tun_read_errors: int = 0
    timer_runs: int = 0
    internal_errors: int = 0
    tun_bad_reads: int = 0  # malformed reads from a vnet-hdr TUN (dropped)
    tun_gso_reads: int = 0  # reads that carried more than one packet
    tun_gso_writes: int = 0  # coalesced super-packets written
    udp_gso_sends: int = 0  # sendmsg calls carrying more than one datagram
    udp_gro_reads: int = 0  # receives that carried more than one datagram
    datapath_queue_full: int = 0  # items the data-path thread could not queue for Python

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def sockaddr_of(family: int, ep: Endpoint) -> SockAddr:
    """The socket address of an endpoint on a socket of `family`: IPv4 mapped on a dual-stack
    (AF_INET6) socket, a `%zone` resolved to its scope id; OSError for an unusable one."""
    host, port = ep
    if family == socket.AF_INET6:
        host = map_host(host)
        scope = 0
        if "%" in host:
            host, _, zone = host.partition("%")
            scope = socket.if_nametoindex(zone) if not zone.isdigit() else int(zone)
        return (host, port, 0, scope)
    if ":" in host:
        raise OSError(errno.EAFNOSUPPORT, "IPv6 endpoint on an IPv4-only socket")
    return (host, port)


def raw_sockaddr(family: int, ep: Endpoint) -> bytes:
    """The struct sockaddr_in / sockaddr_in6 bytes of an endpoint on a socket of `family`
    (what the C data path sends to); OSError for an unusable one."""
    addr = sockaddr_of(family, ep)
    fam = family.to_bytes(2, _NATIVE)
    host, port = addr[0], addr[1]
    if len(addr) == 4:
        return (fam + port.to_bytes(2, "big") + bytes(4)
                + socket.inet_pton(socket.AF_INET6, host) + addr[3].to_bytes(4, _NATIVE))
    return fam + port.to_bytes(2, "big") + socket.inet_aton(host) + bytes(8)


def endpoint_of_sockaddr(raw: bytes) -> Endpoint:
    """(host, port) of a raw struct sockaddr_in / sockaddr_in6 (what recv_batch returns), as
    the socket module reports it (IPv4-mapped addresses unmapped, `%zone` on scoped ones)."""
    fam = int.from_bytes(raw[0:2], _NATIVE)
    port = int.from_bytes(raw[2:4], "big")
    if fam == socket.AF_INET6 and len(raw) >= 24:
        host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        scope = int.from_bytes(raw[24:28], _NATIVE) if len(raw) >= 28 else 0
        if scope:
            try:
                host += "%" + socket.if_indextoname(scope)
            except OSError:
                host += f"%{scope}"
        return (unmap_host(host), port)
    if fam == socket.AF_INET and len(raw) >= 8:
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    raise ValueError(f"unexpected address family {fam}")


def endpoint_cached(cache: dict[object, Endpoint], raw: bytes) -> Endpoint:
    """endpoint_of_sockaddr through a bounded cache (cleared when full) of raw addresses."""
    ep = cache.get(raw)
    if ep is None:
        if len(cache) > _ADDR_CACHE_MAX:
            cache.clear()
        ep = cache[raw] = endpoint_of_sockaddr(raw)
    return ep


def make_udp_socket(port: int, fwmark: int = 0) -> socket.socket:
    """A non-blocking dual-stack UDP socket bound to `port` (0 = any); IPv4-only fallback."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", port))
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            raise
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("0.0.0.0", port))
        except BaseException:
            sock.close()
            raise
    sock.setblocking(False)
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    if fwmark:
        set_fwmark(sock, fwmark)
    return sock


IP_PMTUDISC_PROBE = 3  # linux/in.h; the IPv6 value (IPV6_PMTUDISC_PROBE) is the same


def set_dont_fragment(sock: socket.socket) -> None:
    """Every datagram leaves with DF set and is never fragmented, up to the interface MTU,
    whatever ICMP said about the path: path MTU probes must see the path as it is
    (mesh/path_probe.py), and TCP in the tunnel is kept within it by MSS clamping. A mesh
    node's socket (daemon/path_probes.py); the standalone interface keeps the kernel's
    default (fragment what exceeds a learned path MTU)."""
    opts = [(socket.IPPROTO_IP, getattr(socket, "IP_MTU_DISCOVER", 10))]
    if sock.family == socket.AF_INET6:
        opts.append((socket.IPPROTO_IPV6, getattr(socket, "IPV6_MTU_DISCOVER", 23)))
    for level, opt in opts:
        with contextlib.suppress(OSError):
            sock.setsockopt(level, opt, IP_PMTUDISC_PROBE)


def set_fwmark(sock: socket.socket, mark: int) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)


def offload_default(env: dict[str, str] | None = None) -> bool:
    """Offloads are on unless MESHGUARD_NO_OFFLOAD is set to something other than 0."""
    e = os.environ if env is None else env
    return e.get("MESHGUARD_NO_OFFLOAD", "") in ("", "0")


class UdpSender:
    """Sends from the engine's socket (None until bound) and counts into its stats."""

    def __init__(self, stats: EngineStats) -> None:
        self.stats = stats
        self.sock: socket.socket | None = None
        self.family = socket.AF_INET6
        self.gso = False
        self._addr_cache: dict[Endpoint, SockAddr] = {}

    def attach(self, sock: socket.socket | None, gso: bool = False) -> None:
        """Send from `sock` from now on (a new bind), with UDP GSO if it supports it."""
        self.sock = sock
        if sock is not None:
            self.family = sock.family
        self.gso = gso
        self._addr_cache.clear()

    def sockaddr(self, ep: Endpoint) -> SockAddr:
        """The socket address of an endpoint (IPv4 mapped on the dual-stack socket, a
        `%zone` resolved to its scope id); OSError for an unusable one."""
        addr = self._addr_cache.get(ep)
        if addr is None:
            addr = sockaddr_of(self.family, ep)
            if len(self._addr_cache) > _ADDR_CACHE_MAX:
                self._addr_cache.clear()
            self._addr_cache[ep] = addr
        return addr

    def send_datagrams(self, grams: list[Datagram]) -> None:
        """Plain datagrams, one sendto each."""
        sock = self.sock
        if sock is None:
            return
        sendto = sock.sendto
        st = self.stats
        sent = 0
        for data, ep in grams:
            try:
                sendto(data, self.sockaddr(ep))
                sent += 1
            except BlockingIOError:
                st.udp_send_would_block += 1
            except ConnectionRefusedError:
                st.udp_send_refused += 1
            except (OSError, ValueError):
                st.udp_send_errors += 1
        st.udp_tx += sent

    def send_sealed(self, out: list[Sealed]) -> None:
        """Send sealed messages: (buffer of `count` messages, each `seg` bytes but the last,
        endpoint). Consecutive buffers to one endpoint whose messages all have one size share
        a GSO send; larger buffers are cut into GSO-sized chunks."""
        sock = self.sock
        if sock is None:
            return
        run: list[bytes | memoryview] = []
        run_ep: Endpoint = ("", 0)
        run_seg = run_n = run_bytes = 0
        run_open = False
        gso = self.gso
        for data, seg, k, ep in out:
            size = len(data)
            per = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // seg) if gso else 1
            if (
                run_open
                and ep == run_ep
                and seg == run_seg
                and run_n + k <= per
                and run_bytes + size <= GSO_MAX_BYTES
            ):
                run.append(data)
                run_n += k
                run_bytes += size
                run_open = size == k * seg
                continue
            if run:
                self.send_run(run, run_seg, run_n, run_ep)
                run = []
            if k <= per:
                run = [data]
                run_ep, run_seg, run_n, run_bytes = ep, seg, k, size
                run_open = size == k * seg
                continue
            mv = memoryview(data)
            step = per * seg
            for i in range(0, size, step):
                chunk = mv[i : i + step]
                self.send_run([chunk], seg, -(-len(chunk) // seg), ep)
        if run:
            self.send_run(run, run_seg, run_n, run_ep)
        # gso may have been switched off by a failed send; stays off for this socket

    def send_run(self, bufs: list[bytes | memoryview], seg: int, n: int, ep: Endpoint) -> None:
        """One sendmsg of n messages of `seg` bytes (UDP GSO when n > 1)."""
        sock = self.sock
        st = self.stats
        if sock is None:
            return
        try:
            addr = self.sockaddr(ep)
        except (OSError, ValueError):
            st.udp_send_errors += n
            return
        try:
            if n == 1:
                sock.sendto(bufs[0], addr)
            else:
                sock.sendmsg(bufs, [(SOL_UDP, UDP_SEGMENT, _U16N.pack(seg))], 0, addr)
                st.udp_gso_sends += 1
            st.udp_tx += n
            return
        except BlockingIOError:
            st.udp_send_would_block += n
            return
        except ConnectionRefusedError:
            st.udp_send_refused += n
            return
        except OSError as exc:
            if n == 1 or exc.errno not in (_GSO_OFF | {errno.EINVAL, errno.EMSGSIZE}):
                st.udp_send_errors += n
                return
            if exc.errno in _GSO_OFF:
                log.info("engine: UDP GSO refused (%s); sending datagram by datagram",
                         exc.strerror)
                self.gso = False
        # GSO refused: one datagram per send
        data = memoryview(b"".join(bufs))
        for i in range(0, len(data), seg):
            try:
                sock.sendto(data[i : i + seg], addr)
                st.udp_tx += 1
            except BlockingIOError:
                st.udp_send_would_block += 1
            except ConnectionRefusedError:
                st.udp_send_refused += 1
            except OSError:
                st.udp_send_errors += 1

