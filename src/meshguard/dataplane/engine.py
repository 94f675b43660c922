"""The batched userspace data path: one UDP socket and one TUN fd on an asyncio loop.

    engine = Engine(device, tun_fd, clock)
    engine.bind(51820)          # dual-stack UDP socket (IPv4 and IPv6 outside)
    engine.start(loop)          # offload setup, add_reader on both fds, timer at next_deadline()
    ...
    engine.kick()               # after a configuration change (timers may have moved)
    engine.close()

On every readiness wake-up the engine drains up to `batch` reads (until EAGAIN) and processes
them at once; it never waits for a batch to fill, so a lone ping costs one read and one send.
Latency for sparse traffic: an fd woken more than QUIET_GAP after its previous wake-up reads
one packet only (no probing read that fails with EAGAIN: the level-triggered loop wakes us
again if more is queued), and after such a UDP wake-up wrote to the TUN, the engine reads the
TUN at once, since the answer (a ping reply) is often queued there already. Busy fds behave
as before (drain, batch). Both can be switched off for comparisons: MESHGUARD_LAZY_DRAIN=0,
MESHGUARD_TUN_PEEK=0.

Offloads (on by default; `offload=False` or MESHGUARD_NO_OFFLOAD=1 turns them off, and each
one falls back on its own when the kernel refuses it):
  - TUN: when the fd was attached with IFF_VNET_HDR (TunDevice.open does that), `start`
    enables TSO4/TSO6 and checksum offload: one read is a TCP super-packet of up to 64 KB,
    which `fastpath.seal_segments` cuts into MTU-sized packets, each sealed as a standard
    transport message (one C call per read). Writes coalesce the decrypted TCP segments of
    a flow back into one super-packet (`fastpath.coalesce`).
  - UDP: GSO (UDP_SEGMENT) sends the sealed messages of a read, or of several reads of equal
    size to one endpoint, in one sendmsg; GRO (UDP_GRO) receives trains of same-size datagrams
    in one recvmsg, opened by `fastpath.open_batch` per run of one keypair.
The fast path module is the C extension when built (`fastpath.IMPLEMENTATION`), else its pure
Python twin (MESHGUARD_PURE_PYTHON=1 forces it); ciphers are keyed once per keypair.

Transport data takes the Device's fast path (route and keypair once per peer and batch, replay
/AEAD/source checks per packet, bookkeeping once per keypair and batch); handshakes, cookies,
timers, packets for peers without a session and everything else go through the sans-IO slow
path (`receive_datagram`, `send_packet`, `tick`), whose actions the engine executes. The replay
window stays in Python (wireguard/keypair.py): results of a batched open are accepted in order,
with the verdicts of the per-packet path (see fastpath.py). The engine owns no protocol policy.
Socket errors are counted and never raised into the loop; a bug below is logged and counted
(`internal_errors`).

Reading the UDP socket: with the C fast path one recvmmsg takes up to `batch` datagrams (up to
4 per wake-up while the socket stays full), and the Device's handshake guard (its C twin,
installed by `start`) checks handshake messages right there: a flood of initiations is
rate-limited, refused or answered with cookie replies without entering Python (as are
received cookie replies over their source's bucket, and transport messages naming none of the
Device's receiver indices), so the socket is drained as fast as the flood arrives and a
legitimate peer's messages are not lost in the kernel's queue. Passed handshake messages and
everything else take the paths below. Without the C module (or MESHGUARD_RECVMMSG=0) the
engine reads datagram by datagram and the Device runs the same checks (wireguard/cookie.py's
HandshakeGuard), with the same verdicts and counters.

Seams (also used by tests and the mesh daemon): `tun_packets_in(packets)` (plain IP packets
from the TUN), `datagrams_in(grams)`, `send_datagrams(grams)` (slow-path sends: handshakes,
keepalives, gossip), `write_tun(packets)` (plain IP packets, coalesced when offloading).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from meshguard.clock import Clock, SystemClock
from meshguard.dataplane import fastpath
from meshguard.dataplane.cipher_cache import CipherCache
from meshguard.dataplane.offload import split_tun_read
from meshguard.dataplane.vnet import VNET_HDR_LEN, ZERO_HDR, TunOffloadError, enable_offloads
from meshguard.wireguard.actions import SendDatagram, WriteTun
from meshguard.wireguard.device import Device

log = logging.getLogger(__name__)

Endpoint = tuple[str, int]
Datagram = tuple[bytes, Endpoint]

DEFAULT_BATCH = 64  # packets drained per wake-up (64 measured best: docs/performance.md#batching)
TUN_READ_SIZE = 65535
QUIET_GAP = 0.001  # s since an fd's previous wake-up after which it reads one packet only
UDP_READ_SIZE = 65535
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
_GRO_ANC = socket.CMSG_SPACE(4)
_U16N = struct.Struct("=H")
_I32N = struct.Struct("=i")
_monotonic = time.monotonic
_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: IntFlag arithmetic is slow per packet
_GSO_OFF = frozenset({errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT})

_TRANSPORT_HEADER = struct.Struct("<IIQ")
_NONCE = struct.Struct("<4xQ")
_TRANSPORT_TYPE = b"\x04\x00\x00\x00"
_TRANSPORT_MIN = 32  # header + tag (a keepalive)
_ZEROS = bytes(16)
# read errors meaning the TUN interface no longer exists (EBADFD after `ip link del`)
_TUN_GONE = frozenset({errno.EBADFD, errno.EBADF, errno.ENXIO, errno.ENODEV})
_recv_batch = fastpath.recv_batch
_CGuard = fastpath.HandshakeGuard
_NATIVE = sys.byteorder
RECV_ROUNDS = 4  # recvmmsg calls per wake-up while each one comes back full


def seal_batch(aead: Any, receiver: int, first: int, packets: list[bytes]) -> list[bytes]:
    """Transport messages for consecutive counters first, first+1, ... (padding to 16)."""
    out: list[bytes] = []
    pack_hdr = _TRANSPORT_HEADER.pack
    pack_nonce = _NONCE.pack
    enc = aead.encrypt
    zeros = _ZEROS
    counter = first
    for pkt in packets:
        pad = -len(pkt) & 15
        if pad:
            pkt = pkt + zeros[:pad]
        out.append(pack_hdr(4, receiver, counter) + enc(pack_nonce(counter), pkt, None))
        counter += 1
    return out


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

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _unmap(host: str) -> str:
    """`::ffff:1.2.3.4` (an IPv4 peer seen on the dual-stack socket) -> `1.2.3.4`."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


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
        return (_unmap(host), port)
    if fam == socket.AF_INET and len(raw) >= 8:
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    raise ValueError(f"unexpected address family {fam}")


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


def set_fwmark(sock: socket.socket, mark: int) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)


def offload_default(env: dict[str, str] | None = None) -> bool:
    """Offloads are on unless MESHGUARD_NO_OFFLOAD is set to something other than 0."""
    e = os.environ if env is None else env
    return e.get("MESHGUARD_NO_OFFLOAD", "") in ("", "0")


class Engine:
    def __init__(
        self,
        device: Device,
        tun_fd: int,
        clock: Clock | None = None,
        batch: int = DEFAULT_BATCH,
        on_actions: Callable[[list[Any]], None] | None = None,
        on_tun_gone: Callable[[OSError], None] | None = None,
        offload: bool | None = None,
    ) -> None:
        self.device = device
        self.tun_fd = tun_fd
        self.clock: Clock = clock or SystemClock()
        self.batch = batch
        self.stats = EngineStats()
        self.sock: socket.socket | None = None
        self.port = 0
        self.fwmark = 0
        self.offload = offload_default() if offload is None else offload
        self.vnet = False  # the TUN fd carries virtio-net headers (set up in start())
        self.tun_offloads = 0  # TUN_F_* bits the kernel accepted
        self.tun_tso = False  # coalesce TCP segments into GSO writes
        self.gso = False
        self.gro = False
        self._family = socket.AF_INET6
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._addr_cache: dict[Endpoint, tuple[Any, ...]] = {}
        self._ep_cache: dict[tuple[Any, ...], Endpoint] = {}  # sockaddr -> Endpoint
        self._ciphers = CipherCache()  # entries die with their keypair (ZERO_KEYS)
        self._rbuf = bytearray(GRO_BUFFER)
        self._rmv = memoryview(self._rbuf)
        self._on_actions = on_actions  # other actions (HandshakeCompleted, ...) for the owner
        self._on_tun_gone = on_tun_gone  # the TUN fd reports the interface deleted
        self.tun_peek = os.environ.get("MESHGUARD_TUN_PEEK", "1") == "1"
        # one recvmmsg per batch, handshake guard in C (when the C fast path is built)
        self.c_recv = (_recv_batch is not None
                       and os.environ.get("MESHGUARD_RECVMMSG", "1") == "1")
        self.lazy_drain = os.environ.get("MESHGUARD_LAZY_DRAIN", "1") == "1"
        # when the previous wake-up of an fd was long ago (sparse traffic: a ping, a DNS
        # query), read one packet and let the (level-triggered) loop wake us again if more
        # came, instead of probing with one more read that fails (EAGAIN); busy fds drain
        self._tun_last = 0.0
        self._udp_last = 0.0

    # --- sockets ---------------------------------------------------------------------------

    def bind(self, port: int) -> int:
        """(Re)bind the UDP socket; returns the bound port. Raises OSError (EADDRINUSE) and
        keeps the old socket when the new one cannot be bound."""
        if self.sock is not None and port != 0 and port == self.port:
            return self.port
        new = make_udp_socket(port, self.fwmark)
        old = self.sock
        if old is not None and self._loop is not None:
            self._loop.remove_reader(old.fileno())
        self.sock = new
        self._family = new.family
        self.port = int(new.getsockname()[1])
        self._addr_cache.clear()
        self.gso = self.gro = False
        if self.offload:
            try:
                new.getsockopt(SOL_UDP, UDP_SEGMENT)
                self.gso = True
            except OSError:
                pass
            try:
                new.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass
        if self._loop is not None:
            self._loop.add_reader(new.fileno(), self._udp_readable)
        if old is not None:
            old.close()
        return self.port

    def set_fwmark(self, mark: int) -> None:
        self.fwmark = mark
        if self.sock is not None:
            set_fwmark(self.sock, mark)

    def _setup_tun(self) -> None:
        """virtio-net headers and TSO/checksum offload when the fd was attached with
        IFF_VNET_HDR; anything else (a plain TUN, a test's socketpair) reads plain packets."""
        self.vnet = self.tun_tso = False
        self.tun_offloads = 0
        if self.tun_fd < 0:
            return
        try:
            if self.offload:
                state = enable_offloads(self.tun_fd)
            else:
                # headers stay on if the fd has them; no segmentation offloads
                state = enable_offloads(self.tun_fd, want=0)
        except (TunOffloadError, OSError):
            return
        self.vnet = state.vnet_hdr
        self.tun_offloads = state.offloads
        self.tun_tso = state.tso

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        if self.sock is None:
            self.bind(0)
        assert self.sock is not None
        self._setup_tun()
        self.install_guard()
        self._loop.add_reader(self.sock.fileno(), self._udp_readable)
        self._loop.add_reader(self.tun_fd, self._tun_readable)
        self.kick()

    def close(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.tun_fd)
            if self.sock is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self.sock.fileno())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._loop = None
        self._ciphers.clear()

    def install_guard(self) -> None:
        """Give the Device the C twin of its handshake guard (same parameters), which
        recv_batch runs on handshake messages as they are read; a no-op without the C fast
        path, with MESHGUARD_RECVMMSG=0, or for a device without a guard."""
        if not self.c_recv or _CGuard is None:
            return
        dev = self.device
        guard = getattr(dev, "guard", None)
        if guard is None or isinstance(guard, _CGuard) or not hasattr(guard, "params"):
            return
        dev.use_guard(_CGuard(**guard.params()))

    def describe_offloads(self) -> str:
        parts = [f"fastpath={fastpath.IMPLEMENTATION}"]
        parts.append(f"tun={'vnet' if self.vnet else 'plain'}/{self.tun_offloads:#x}")
        parts.append(f"gso={'on' if self.gso else 'off'} gro={'on' if self.gro else 'off'}")
        guarded = type(getattr(self.device, "guard", None)) is _CGuard
        parts.append("udp=recvmmsg" + ("+guard" if guarded else "") if self.c_recv
                     else "udp=recvmsg")
        return " ".join(parts)

    # --- timers ----------------------------------------------------------------------------

    def kick(self) -> None:
        """Run due timers now and re-arm at the device's next deadline (after config changes)."""
        if self._timer is not None:
            self._timer.cancel()
        self._on_timer()

    def _arm(self) -> None:
        loop = self._loop
        if loop is None:
            return
        deadline = self.device.next_deadline()
        if deadline is None:
            return
        if self._timer is not None and self._timer_at is not None:
            if self._timer_at <= deadline:
                return  # an earlier wake-up is already armed; tick then re-arms
            self._timer.cancel()
        self._timer_at = deadline
        delay = max(0.0, deadline - self.clock.monotonic())
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.stats.timer_runs += 1
        c = self.clock
        try:
            actions = self.device.tick(c.monotonic(), c.wall())
            if actions:
                self.execute(actions)
        except Exception:
            self._internal_error("timer")
        finally:
            self._arm()

    def _internal_error(self, where: str) -> None:
        # a bug below must not stop the data path or the timers; it is logged and counted
        self.stats.internal_errors += 1
        log.exception("engine: internal error in %s path", where)

    def _cipher(self, tc: Any) -> Any:
        """The fast-path cipher for a keypair's TransportCipher, keyed once."""
        return self._ciphers.get(tc)

    # --- TUN -> UDP -------------------------------------------------------------------------

    def _drain_limit(self, last: float) -> tuple[int, float]:
        """How many reads this wake-up may take, and the new time of the last wake-up: one
        after a quiet gap (sparse traffic, lazy_drain), else a whole batch."""
        if not self.lazy_drain:
            return self.batch, last
        now = _monotonic()
        return (1 if now - last > QUIET_GAP else self.batch), now

    def _tun_readable(self) -> None:
        reads: list[bytes] = []
        read = os.read
        fd = self.tun_fd
        size = TUN_READ_SIZE + VNET_HDR_LEN if self.vnet else TUN_READ_SIZE
        limit, self._tun_last = self._drain_limit(self._tun_last)
        for _ in range(limit):
            try:
                reads.append(read(fd, size))
            except BlockingIOError:
                break
            except OSError as exc:
                self.stats.tun_read_errors += 1
                if exc.errno in _TUN_GONE:
                    self._tun_gone(exc)
                    return
                break
        if reads:
            self.stats.tun_rx += len(reads)
            self.stats.tun_rx_batches += 1
            try:
                self._tun_in(reads, self.vnet)
            except Exception:
                self._internal_error("tun")
            self._arm()

    def _tun_gone(self, exc: OSError) -> None:
        """The interface was deleted under us: stop reading it (no busy loop) and tell the
        owner, which normally shuts down (as wireguard-go exits)."""
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.tun_fd)
        log.warning("engine: TUN device gone (%s)", exc.strerror)
        if self._on_tun_gone is not None:
            self._on_tun_gone(exc)

    def tun_packets_in(self, packets: list[bytes]) -> None:
        """Plain IP packets read from the TUN -> sealed transport datagrams."""
        self._tun_in(packets, False)

    def _tun_in(self, reads: list[bytes], vnet: bool) -> None:
        """TUN reads (virtio-net header + packet when `vnet`) -> sealed transport messages.

        Reads are grouped by peer; each group costs one route/keypair lookup and one
        bookkeeping call (Device fast path), each read one counter reservation and one
        split-and-seal call. Reads for a peer without a usable session go to the slow path,
        which queues their packets and starts a handshake.
        """
        dev = self.device
        c = self.clock
        now, wall = c.monotonic(), c.wall()
        groups: dict[Any, list[bytes]] = {}
        rest: list[bytes] = []
        route = dev.route
        no_route = 0
        off = VNET_HDR_LEN if vnet else 0
        for r in reads:
            n = len(r) - off
            if n <= 0:
                if vnet:
                    self.stats.tun_bad_reads += 1
                continue
            version = r[off] >> 4
            if version == 4 and n >= 20:
                dst = r[off + 16 : off + 20]
            elif version == 6 and n >= 40:
                dst = r[off + 24 : off + 40]
            else:
                rest.append(r)  # the slow path counts it (bad_inner)
                continue
            peer = route(dst)
            if peer is None:
                no_route += 1
                continue
            group = groups.get(peer)
            if group is None:
                groups[peer] = [r]
            else:
                group.append(r)
        if no_route:
            dev.note_dropped("no_route", no_route)
        out: list[tuple[bytes, int, int, Endpoint]] = []
        actions: list[Any] = []
        prepare = dev.prepare_send_peer
        count = fastpath.segment_count
        seal = fastpath.seal_segments
        st = self.stats
        for peer, rs in groups.items():
            b = prepare(now, peer)
            if b is None:
                rest.extend(rs)
                continue
            cipher = self._cipher(b.cipher)
            receiver = b.receiver_index
            reserve = b.reserve
            ep = b.endpoint
            n_pk = n_bytes = 0
            for r in rs:
                try:
                    k = count(r, vnet)
                except ValueError:
                    st.tun_bad_reads += 1
                    continue
                first = reserve(k)
                if first is None:
                    rest.append(r)
                    continue
                data, seg, k = seal(cipher, receiver, first, r, vnet)
                out.append((data, seg, k, ep))
                n_pk += k
                n_bytes += len(data)
                if k > 1:
                    st.tun_gso_reads += 1
            if n_pk:
                actions += dev.note_sent(now, peer, n_pk, n_bytes, wall=wall)
        if out:
            self._send_sealed(out)
        if rest:
            send_packet = dev.send_packet
            for r in rest:
                if vnet:
                    try:
                        pkts = split_tun_read(r)
                    except ValueError:
                        st.tun_bad_reads += 1
                        continue
                else:
                    pkts = [r]
                for pkt in pkts:
                    actions += send_packet(now, wall, pkt)
        if actions:
            self.execute(actions)

    def _send_sealed(self, out: list[tuple[bytes, int, int, Endpoint]]) -> None:
        """Send sealed messages: (buffer of `count` messages, each `seg` bytes but the last,
        endpoint). Consecutive buffers to one endpoint whose messages all have one size share
        a GSO send; larger buffers are cut into GSO-sized chunks."""
        sock = self.sock
        if sock is None:
            return
        run: list[Any] = []
        run_ep: Endpoint | None = None
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
                self._send_run(run, run_seg, run_n, run_ep)  # type: ignore[arg-type]
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
                self._send_run([chunk], seg, -(-len(chunk) // seg), ep)
        if run:
            self._send_run(run, run_seg, run_n, run_ep)  # type: ignore[arg-type]
        # gso may have been switched off by a failed send; stays off for this socket

    def _send_run(self, bufs: list[Any], seg: int, n: int, ep: Endpoint) -> None:
        sock = self.sock
        st = self.stats
        if sock is None:
            return
        try:
            addr = self._sockaddr(ep)
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

    # --- UDP -> TUN -------------------------------------------------------------------------

    def _udp_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        if self.c_recv:
            self._udp_readable_batch(sock)
            return
        st = self.stats
        rx = _Receive(self)
        recv = sock.recvmsg_into
        bufs = [self._rbuf]
        mv = self._rmv
        endpoints = self._ep_cache
        n_reads = 0
        limit, self._udp_last = self._drain_limit(self._udp_last)
        for _ in range(limit):
            try:
                n, anc, flags, addr = recv(bufs, _GRO_ANC)
            except BlockingIOError:
                break
            except OSError:
                # e.g. ICMP errors surfacing as ECONNREFUSED on the next call
                st.udp_recv_errors += 1
                continue
            if flags & _MSG_TRUNC:
                st.udp_recv_errors += 1
                continue
            n_reads += 1
            seg = 0
            for level, kind, value in anc:
                if level == SOL_UDP and kind == UDP_GRO:
                    seg = (_I32N.unpack(value[:4])[0] if len(value) >= 4
                           else _U16N.unpack(value[:2])[0])
            ep = endpoints.get(addr)
            if ep is None:
                if len(endpoints) > 4096:
                    endpoints.clear()
                ep = endpoints[addr] = (_unmap(addr[0]), addr[1])
            if 0 < seg < n:
                st.udp_gro_reads += 1
                st.udp_rx += -(-n // seg)
            else:
                seg = 0
                st.udp_rx += 1
            try:
                rx.feed(mv[:n], seg, ep)
            except Exception:
                self._internal_error("udp")
        if n_reads:
            self._udp_batch_done(rx, limit)

    def _udp_batch_done(self, rx: _Receive, limit: int) -> None:
        """After a batch read from the UDP socket: flush what it decrypted, re-arm timers."""
        st = self.stats
        st.udp_rx_batches += 1
        tun_tx = st.tun_tx
        try:
            rx.finish()
        except Exception:
            self._internal_error("udp")
        self._arm()
        if limit == 1 and st.tun_tx != tun_tx and self.tun_peek and self._loop is not None:
            # sparse traffic: an answer to what was just written (a ping reply) is often
            # queued on the TUN already: take it now rather than after another wake-up
            # (busy fds leave it to the TUN's own wake-up, which batches)
            self._tun_readable()

    def _udp_readable_batch(self, sock: socket.socket) -> None:
        """The C reader: recvmmsg batches with the handshake guard applied in C."""
        st = self.stats
        limit, self._udp_last = self._drain_limit(self._udp_last)
        rx = _Receive(self)
        guard = getattr(self.device, "guard", None)
        if type(guard) is not _CGuard:
            guard = None
        indices = getattr(self.device, "receiver_indices", None)
        if type(indices) is not dict:
            indices = None
        endpoints = self._ep_cache
        unknown = 0
        fd = sock.fileno()
        n_reads = 0
        for _ in range(RECV_ROUNDS if limit > 1 else 1):
            try:
                items, got, reads, grams, gro, errs, sent, serr, wb, unk = _recv_batch(
                    fd, limit, guard, rx.now, indices)
            except Exception:
                self._internal_error("udp")
                break
            st.udp_rx += grams
            st.udp_gro_reads += gro
            st.udp_recv_errors += errs
            if sent or serr or wb:
                st.udp_tx += sent
                st.udp_send_errors += serr
                st.udp_send_would_block += wb
            n_reads += reads
            unknown += unk
            for data, seg, addr, admitted in items:
                ep = endpoints.get(addr)
                try:
                    if ep is None:
                        if len(endpoints) > 4096:
                            endpoints.clear()
                        ep = endpoints[addr] = endpoint_of_sockaddr(addr)
                    if admitted and guard is not None:
                        guard.set_ticket(data[-32:-16])
                    rx.feed(memoryview(data), seg, ep)
                except Exception:
                    self._internal_error("udp")
            if got < limit:
                break
        if guard is not None:
            counts = guard.take_counts()
            if any(counts):
                self.device.count_verdicts(counts)
        if unknown:
            rx.c_drops["unknown_index"] += unknown
        if n_reads:
            self._udp_batch_done(rx, limit)

    def datagrams_in(self, grams: list[Datagram]) -> None:
        """Datagrams (one per entry) -> decrypted packets written to the TUN; the same path
        the socket reader takes."""
        rx = _Receive(self)
        for data, src in grams:
            rx.feed(memoryview(data), 0, src)
        rx.finish()

    def execute(self, actions: Iterable[Any]) -> None:
        """Carry out device actions: datagrams and TUN writes batched, the rest to the owner."""
        out: list[Datagram] = []
        tun: list[bytes] = []
        other: list[Any] = []
        for a in actions:
            if isinstance(a, SendDatagram):
                out.append((a.data, a.endpoint))
            elif isinstance(a, WriteTun):
                tun.append(a.packet)
            else:
                other.append(a)
        if out:
            self.send_datagrams(out)
        if tun:
            self.write_tun(tun)
        if other and self._on_actions is not None:
            self._on_actions(other)

    def _sockaddr(self, ep: Endpoint) -> tuple[Any, ...]:
        addr = self._addr_cache.get(ep)
        if addr is None:
            host, port = ep
            if self._family == socket.AF_INET6:
                if ":" not in host:
                    host = "::ffff:" + host
                scope = 0
                if "%" in host:
                    host, _, zone = host.partition("%")
                    scope = socket.if_nametoindex(zone) if not zone.isdigit() else int(zone)
                addr = (host, port, 0, scope)
            else:
                if ":" in host:
                    raise OSError(errno.EAFNOSUPPORT, "IPv6 endpoint on an IPv4-only socket")
                addr = (host, port)
            if len(self._addr_cache) > 4096:
                self._addr_cache.clear()
            self._addr_cache[ep] = addr
        return addr

    def send_datagrams(self, grams: list[Datagram]) -> None:
        sock = self.sock
        if sock is None:
            return
        sendto = sock.sendto
        st = self.stats
        sent = 0
        for data, ep in grams:
            try:
                sendto(data, self._sockaddr(ep))
                sent += 1
            except BlockingIOError:
                st.udp_send_would_block += 1
            except ConnectionRefusedError:
                st.udp_send_refused += 1
            except (OSError, ValueError):
                st.udp_send_errors += 1
        st.udp_tx += sent

    def write_tun(self, packets: list[bytes]) -> None:
        """Write plain IP packets to the TUN; with virtio-net headers, TCP segments of a flow
        are coalesced into super-packets first (one write each)."""
        write = os.write
        fd = self.tun_fd
        st = self.stats
        n = 0
        if self.vnet:
            bufs = fastpath.coalesce(packets) if self.tun_tso else [
                ZERO_HDR + p for p in packets]
            for b in bufs:
                try:
                    write(fd, b)
                except OSError:
                    st.tun_write_errors += 1
                    continue
                if b[1]:
                    st.tun_gso_writes += 1
            st.tun_tx += len(packets)
            return
        for pkt in packets:
            try:
                write(fd, pkt)
                n += 1
            except OSError:
                st.tun_write_errors += 1
        st.tun_tx += n


_DROPS = ("unknown_index", "replay", "bad_auth", "bad_inner", "bad_source")


class _Receive:
    """One wake-up's worth of received datagrams: transport runs opened in batches (replay,
    source checks per packet), everything else through the slow path in arrival order, with
    the TUN writes and bookkeeping gathered so far flushed before each slow-path datagram."""

    __slots__ = ("acc", "actions", "c_drops", "dev", "engine", "last_index", "last_kp",
                 "now", "src_ok", "tun", "wall")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dev = engine.device
        c = engine.clock
        self.now, self.wall = c.monotonic(), c.wall()
        self.tun: list[bytes] = []
        # keypair -> [packets, bytes, keepalives, last source]
        self.acc: dict[Any, list[Any]] = {}
        self.c_drops = dict.fromkeys(_DROPS, 0)
        self.actions: list[Any] = []
        # (peer, inner source) -> allowed, for this wake-up only (routes may change between)
        self.src_ok: dict[tuple[Any, bytes], bool] = {}
        self.last_index = -1
        self.last_kp: Any = None

    def flush(self) -> None:
        if self.tun:
            self.engine.write_tun(self.tun)
            self.tun = []
        if self.acc:
            dev, now, wall = self.dev, self.now, self.wall
            for k, (n, nbytes, keep, src) in self.acc.items():
                self.actions.extend(
                    dev.note_received(now, k, n, nbytes, src, n_keepalive=keep, wall=wall)
                )
            self.acc.clear()

    def feed(self, data: memoryview, seg: int, src: Endpoint) -> None:
        """One received buffer: a datagram, or (seg > 0) a GRO train cut every seg bytes."""
        n = len(data)
        pos = 0
        drops = self.c_drops
        if not n:  # an empty datagram is garbage for the slow path to count
            self.flush()
            self.actions.extend(self.dev.receive_datagram(self.now, self.wall, b"", src))
            return
        while pos < n:
            dlen = n - pos
            if 0 < seg < dlen:
                dlen = seg
            if dlen < _TRANSPORT_MIN or data[pos : pos + 4] != _TRANSPORT_TYPE:
                self.flush()
                self.last_index = -1
                self.actions.extend(self.dev.receive_datagram(
                    self.now, self.wall, bytes(data[pos : pos + dlen]), src))
                pos += dlen
                continue
            receiver = int.from_bytes(data[pos + 4 : pos + 8], "little")
            if receiver != self.last_index:
                kp = self.dev.keypair_for_receive(receiver)
                if kp is not None and kp.receive_expired(self.now):
                    kp = None
                self.last_index = receiver
                self.last_kp = kp
            kp = self.last_kp
            if kp is None:
                drops["unknown_index"] += 1
                pos += dlen
                continue
            end, results = fastpath.open_batch(
                self.engine._cipher(kp.receive), data, seg, receiver, pos)
            if end <= pos:  # cannot happen (the header was checked); never loop forever
                pos += dlen
                continue
            pos = end
            self._accept(kp, results, src)

    def _accept(self, kp: Any, results: list[Any], src: Endpoint) -> None:
        replay = kp.replay
        accept = replay.accept
        drops = self.c_drops
        peer = kp.peer
        src_ok = self.src_ok
        tun = self.tun
        npk = nbytes = keep = 0
        for counter, status, pkt, inner_src, wire_len in results:
            if status == _BAD_AUTH:
                # as if checked before decrypting: a replayed counter counts as a replay
                drops["replay" if not replay.check(counter) else "bad_auth"] += 1
                continue
            if not accept(counter):
                drops["replay"] += 1
                continue
            npk += 1
            nbytes += wire_len
            if status:
                if status == _KEEPALIVE:
                    keep += 1
                else:
                    drops["bad_inner"] += 1
                continue
            key = (peer, inner_src)
            ok = src_ok.get(key)
            if ok is None:
                ok = src_ok[key] = self.dev.source_allowed(peer, inner_src)
            if ok:
                tun.append(pkt)
            else:
                drops["bad_source"] += 1
        if npk:
            a = self.acc.get(kp)
            if a is None:
                self.acc[kp] = [npk, nbytes, keep, src]
            else:
                a[0] += npk
                a[1] += nbytes
                a[2] += keep
                a[3] = src

    def finish(self) -> None:
        self.flush()
        dev = self.dev
        for reason, n in self.c_drops.items():
            if n:
                dev.note_dropped(reason, n)
        if self.actions:
            self.engine.execute(self.actions)


_BAD_AUTH = fastpath.BAD_AUTH
_KEEPALIVE = fastpath.KEEPALIVE


__all__ = [
    "DEFAULT_BATCH",
    "Engine",
    "EngineStats",
    "endpoint_of_sockaddr",
    "make_udp_socket",
    "offload_default",
    "seal_batch",
]
