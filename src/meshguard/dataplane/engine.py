"""The batched userspace data path: one UDP socket and one TUN fd on an asyncio loop.

    engine = Engine(device, tun_fd, clock)     # a Device is both its fast and slow path
    engine.bind(51820)          # dual-stack UDP socket (IPv4 and IPv6 outside)
    engine.connect(fast, slow, router)        # optional, before start: other ports (the mesh)
    engine.start(loop)          # offload setup, add_reader on both fds, timer at next_deadline()
    ...
    engine.kick()               # after a configuration change (timers may have moved)
    engine.close()

With the C module built, `start` hands the per-packet path to the data-path thread
(dataplane/datapath_thread.py, docs/performance.md#data-path-thread): reading, sealing,
opening, segmenting, coalescing and writing run in C without the GIL, under tables copied from
the fast-path port whenever its `generation` moves; what the thread cannot handle comes back to
this engine's Python paths below (the slow path, the TUN path for packets without a session),
and its notes to the fast-path port's note_* calls. MESHGUARD_DATAPATH_THREAD=0, the pure
Python fast path, or a clock that is not the system's keep the asyncio path described next.

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

The engine works through three ports (dataplane/ports.py): transport data takes the fast-path
port (route and keypair once per peer and batch, bookkeeping once per keypair and batch);
handshakes, cookies, timers, packets for peers without a session and everything else go through
the slow-path port (`receive`, `send_packet`, `tick`), whose actions the engine
executes; the send router, when given, takes the datagrams that leave from another socket. What
a received transport message must pass (replay window, source address, keepalives, the drop
reasons) is wireguard/transport.py's accept_batch, the same function the Device's slow path
uses: the engine decides no protocol question itself, it only batches. Socket errors are counted
and never raised into the loop; a bug below is logged and counted (`internal_errors`).

The walk of one datagram from the UDP socket to the TUN (each layer once, docs/architecture.md):
  - transport: socket -> Engine (ReceiveBatch: its type and receiver index pick the fast path)
    -> FastPathPort (keypair) -> fastpath.open_batch -> transport.accept_batch -> TUN write,
    then note_received once per keypair and batch;
  - anything else: socket -> Engine (not a transport message) -> SlowPathPort.receive
    (the Device, or the MeshNode, whose demultiplexer classifies it once and hands a handshake
    to its Device or gossip to SWIM) -> actions back to the Engine, which sends the datagrams
    (through the SendRouter when there is one) and passes the rest to its owner.

Reading the UDP socket: with the C fast path one recvmmsg takes up to `batch` datagrams (up to
4 per wake-up while the socket stays full), and the Device's handshake guard (its C twin,
installed by `start`) checks handshake messages right there: a flood of initiations is
rate-limited, refused or answered with cookie replies without entering Python (as are
received cookie replies over their source's bucket, and transport messages naming none of the
Device's receiver indices), so the socket is drained as fast as the flood arrives and a
legitimate peer's messages are not lost in the kernel's queue. Passed handshake messages and
everything else take the paths above. Without the C module (or MESHGUARD_RECVMMSG=0) the
engine reads datagram by datagram and the Device runs the same checks (wireguard/cookie.py's
HandshakeGuard), with the same verdicts and counters.

Seams (also used by tests and the mesh daemon): `tun_packets_in(packets)` (plain IP packets
from the TUN), `datagrams_in(grams)`, `send_datagrams(grams)` (slow-path sends: handshakes,
keepalives, gossip; through the router), `write_tun(packets)` (plain IP packets, coalesced when
offloading). The clock is injected: the engine reads no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterable, Mapping

from meshguard.clock import Clock, SystemClock
from meshguard.dataplane import datapath_thread, fastpath
from meshguard.dataplane.cipher_cache import CipherCache
from meshguard.dataplane.datapath_thread import DataPathThread
from meshguard.dataplane.mss_clamp import clamp_writes
from meshguard.dataplane.policy_enforcer import PolicyEnforcer
from meshguard.dataplane.policy_filter import PolicyCounters
from meshguard.dataplane.ports import Datagram, FastPathPort, SendRouter, SlowPathPort
from meshguard.dataplane.receive import ReceiveBatch
from meshguard.dataplane.tun_seal import seal_reads
from meshguard.dataplane.udp_io import (
    GRO_BUFFER,
    SOL_UDP,
    UDP_GRO,
    UDP_SEGMENT,
    EngineStats,
    UdpSender,
    endpoint_cached,
    endpoint_of_sockaddr,
    make_udp_socket,
    offload_default,
    set_fwmark,
)
from meshguard.dataplane.vnet import VNET_HDR_LEN, ZERO_HDR, TunOffloadError, enable_offloads
from meshguard.policy.table import PolicyTable
from meshguard.sansio import Endpoint, unmap_host
from meshguard.wireguard.actions import SendDatagram, WriteTun
from meshguard.wireguard.cookie import HandshakeGuard as PyHandshakeGuard

log = logging.getLogger(__name__)

DEFAULT_BATCH = 64  # packets drained per wake-up (64 measured best: docs/performance.md#batching)
TUN_READ_SIZE = 65535
QUIET_GAP = 0.001  # s since an fd's previous wake-up after which it reads one packet only
UDP_READ_SIZE = 65535
_GRO_ANC = socket.CMSG_SPACE(4)
_U16N = struct.Struct("=H")
_I32N = struct.Struct("=i")
_MSG_TRUNC = int(socket.MSG_TRUNC)  # a plain int: IntFlag arithmetic is slow per packet
_EP_CACHE_MAX = 4096
# read errors meaning the TUN interface no longer exists (EBADFD after `ip link del`)
_TUN_GONE = frozenset({errno.EBADFD, errno.EBADF, errno.ENXIO, errno.ENODEV})
_recv_batch = fastpath.recv_batch
_CGuard = fastpath.HandshakeGuard
RECV_ROUNDS = 4  # recvmmsg calls per wake-up while each one comes back full


class Engine:
    """The data path of one UDP socket and one TUN fd (see the module docstring).

    `fast` is the fast-path port; `slow` the slow-path port, by default `fast` itself (a
    standalone Device is both); `router` sends what does not leave from the engine's socket.
    """

    def __init__(
        self,
        fast: FastPathPort,
        tun_fd: int,
        clock: Clock | None = None,
        batch: int = DEFAULT_BATCH,
        on_actions: Callable[[list[object]], None] | None = None,
        on_tun_gone: Callable[[OSError], None] | None = None,
        offload: bool | None = None,
        *,
        slow: SlowPathPort | None = None,
        router: SendRouter | None = None,
    ) -> None:
        if slow is None:
            if not isinstance(fast, SlowPathPort):
                raise TypeError("Engine: give a slow-path port (fast is not one)")
            slow = fast
        self.fast = fast
        self.slow: SlowPathPort = slow
        self.router = router
        self.tun_fd = tun_fd
        self.clock: Clock = clock or SystemClock()
        self.batch = batch
        self.own_stats = EngineStats()
        self.udp = UdpSender(self.own_stats)
        self.port = 0
        self.fwmark = 0
        self.offload = offload_default() if offload is None else offload
        self.vnet = False  # the TUN fd carries virtio-net headers (set up in start())
        self.tun_offloads = 0  # TUN_F_* bits the kernel accepted
        self.tun_tso = False  # coalesce TCP segments into GSO writes
        self.gro = False
        # a peer has a Peer.clamp_mtu: TCP SYNs to the TUN are clamped (dataplane/mss_clamp.py)
        self.clamp_mss = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        # socket address as recvmsg reports it (a tuple) or raw (recv_batch: bytes) -> Endpoint
        self._ep_cache: dict[object, Endpoint] = {}
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
        # the per-packet path in a C thread without the GIL, unless
        # MESHGUARD_DATAPATH_THREAD=0 (then the loop's path below); see
        # docs/performance.md#data-path-thread
        # It reads the system clock itself, so an engine on another clock (a test's manual
        # one, which only the loop's path follows call by call) keeps the loop's path.
        self.use_thread = (datapath_thread.available() and self.c_recv
                           and isinstance(self.clock, SystemClock)
                           and os.environ.get("MESHGUARD_DATAPATH_THREAD", "1") != "0")
        self._dp: DataPathThread | None = None
        self._sync_pending = False  # a _deferred_sync is scheduled (_sync_soon)
        # the policy in force on traffic from the tunnel (dataplane/policy_enforcer.py)
        self.policy = PolicyEnforcer()

    def connect(self, fast: FastPathPort, slow: SlowPathPort,
                router: SendRouter | None = None) -> None:
        """Put other ports behind the engine, before start(): for an owner that binds the
        socket first and builds the protocol layers above on the bound port (the mesh)."""
        if self._loop is not None:
            raise RuntimeError("Engine.connect after start")
        self.fast, self.slow, self.router = fast, slow, router

    # --- sockets ---------------------------------------------------------------------------

    @property
    def stats(self) -> EngineStats:
        """The engine's counters, the data-path thread's included."""
        if self._dp is not None:
            self._dp.merge_stats(self.own_stats)
        return self.own_stats

    @property
    def sock(self) -> socket.socket | None:
        """The engine's UDP socket (None before bind/start and after close)."""
        return self.udp.sock

    @property
    def gso(self) -> bool:
        """UDP GSO is in use on the socket (switched off for good if the kernel refuses)."""
        return self.udp.gso

    def bind(self, port: int) -> int:
        """(Re)bind the UDP socket; returns the bound port. Raises OSError (EADDRINUSE) and
        keeps the old socket when the new one cannot be bound."""
        if self.sock is not None and port != 0 and port == self.port:
            return self.port
        new = make_udp_socket(port, self.fwmark)
        old = self.sock
        if old is not None and self._loop is not None:
            self._loop.remove_reader(old.fileno())
        self.port = int(new.getsockname()[1])
        gso = self.gro = False
        if self.offload:
            try:
                new.getsockopt(SOL_UDP, UDP_SEGMENT)
                gso = True
            except OSError:
                pass
            try:
                new.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass
        self.udp.attach(new, gso)
        if self._dp is not None:
            self._stop_thread()
            self._start_thread()
        elif self._loop is not None:
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
        if self.use_thread and self.tun_fd >= 0:
            self._start_thread()
        else:
            self._loop.add_reader(self.sock.fileno(), self._udp_readable)
            self._loop.add_reader(self.tun_fd, self._tun_readable)
        self.kick()

    def _start_thread(self) -> None:
        assert self._loop is not None
        dp = DataPathThread(self)
        guard = self.fast.guard
        dp.set_guard(guard if _CGuard is not None and isinstance(guard, _CGuard) else None)
        dp.start(self._loop)
        self._dp = dp
        # a change no slow-path action or timer follows (a trust reload removing a peer)
        # reaches the thread on the loop's next iteration, not at the next timer run
        self.fast.watch_changes(self._sync_soon)

    def _sync_soon(self) -> None:
        if self._sync_pending or self._loop is None:
            return
        self._sync_pending = True
        self._loop.call_soon(self._deferred_sync)

    def _deferred_sync(self) -> None:
        self._sync_pending = False
        try:
            self.sync()
        except Exception:
            self._internal_error("datapath")

    def _stop_thread(self) -> None:
        dp, self._dp = self._dp, None
        if dp is not None:
            self.fast.watch_changes(None)
            dp.close()

    def sync(self) -> None:
        """Push the fast-path port's tables to the data-path thread if they changed (the
        engine does it after every slow-path call and timer run)."""
        if self._dp is not None:
            self._dp.sync()

    def close(self) -> None:
        self._stop_thread()
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
            self.udp.attach(None)
        self._loop = None
        self._ciphers.clear()

    def install_guard(self) -> None:
        """Give the Device the C twin of its handshake guard (same parameters), which
        recv_batch runs on handshake messages as they are read; a no-op without the C fast
        path, with MESHGUARD_RECVMMSG=0, or for a device without a guard."""
        if not self.c_recv or _CGuard is None:
            return
        guard = self.fast.guard
        if isinstance(guard, PyHandshakeGuard):
            p = guard.params()
            self.fast.use_guard(_CGuard(
                int(p["threshold"]), p["hold"], p["source_rate"], p["source_burst"],
                p["net_rate"], p["net_burst"], p["dh_rate"], p["dh_burst"], p["cookie_rate"],
                p["cookie_burst"], p["reply_rate"], p["reply_burst"], int(p["max_sources"])))

    def describe_offloads(self) -> str:
        parts = [f"fastpath={fastpath.IMPLEMENTATION}",
                 f"datapath={'thread' if self._dp is not None else 'loop'}"]
        parts.append(f"tun={'vnet' if self.vnet else 'plain'}/{self.tun_offloads:#x}")
        parts.append(f"gso={'on' if self.gso else 'off'} gro={'on' if self.gro else 'off'}")
        guarded = _CGuard is not None and type(self.fast.guard) is _CGuard
        parts.append("udp=recvmmsg" + ("+guard" if guarded else "") if self.c_recv
                     else "udp=recvmsg")
        return " ".join(parts)

    def set_policy(self, table: PolicyTable) -> None:
        """Enforce `table` on every packet from the tunnel, in every mode (docs/policy.md,
        dataplane/policy_filter.py); ValueError for a malformed table (the old one stays)."""
        pf = self.policy.set_table(table)
        if self._dp is not None:
            self._dp.set_policy(pf)

    def policy_counters(self) -> PolicyCounters:
        return self.policy.counters()

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
        deadline = self.slow.next_deadline()
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
        self.own_stats.timer_runs += 1
        c = self.clock
        if self._dp is not None:
            self._dp.set_clock()
        try:
            actions = self.slow.tick(c.monotonic(), c.wall())
            if actions:
                self.execute(actions)
            self.sync()
        except Exception:
            self._internal_error("timer")
        finally:
            self._arm()

    def _internal_error(self, where: str) -> None:
        # a bug below must not stop the data path or the timers; it is logged and counted
        self.stats.internal_errors += 1
        log.exception("engine: internal error in %s path", where)

    def _receive_batch(self) -> ReceiveBatch:
        c = self.clock
        return ReceiveBatch(self.fast, self.slow, self._ciphers, self.write_tun, self.execute,
                            c.monotonic(), c.wall(), self.policy.filter)

    # --- TUN -> UDP -------------------------------------------------------------------------

    def _drain_limit(self, last: float) -> tuple[int, float]:
        """How many reads this wake-up may take, and the new time of the last wake-up: one
        after a quiet gap (sparse traffic, lazy_drain), else a whole batch."""
        if not self.lazy_drain:
            return self.batch, last
        now = self.clock.monotonic()
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
        """TUN reads (virtio-net header + packet when `vnet`) -> sealed transport messages
        (dataplane/tun_seal.py)."""
        seal_reads(self, reads, vnet)

    # --- UDP -> TUN -------------------------------------------------------------------------

    def _udp_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        if self.c_recv and _recv_batch is not None:
            self._udp_readable_batch(sock, _recv_batch)
            return
        st = self.stats
        rx = self._receive_batch()
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
                if len(endpoints) > _EP_CACHE_MAX:
                    endpoints.clear()
                ep = endpoints[addr] = (unmap_host(addr[0]), addr[1])
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

    def _udp_batch_done(self, rx: ReceiveBatch, limit: int) -> None:
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

    def _udp_readable_batch(self, sock: socket.socket, recv_batch: fastpath.RecvBatch) -> None:
        """The C reader: recvmmsg batches with the handshake guard applied in C."""
        st = self.stats
        limit, self._udp_last = self._drain_limit(self._udp_last)
        rx = self._receive_batch()
        fast = self.fast
        guard = fast.guard
        cguard = guard if _CGuard is not None and isinstance(guard, _CGuard) else None
        indices: Mapping[int, object] | None = fast.receiver_indices
        if type(indices) is not dict:
            indices = None
        endpoints = self._ep_cache
        unknown = 0
        fd = sock.fileno()
        n_reads = 0
        for _ in range(RECV_ROUNDS if limit > 1 else 1):
            try:
                items, got, reads, grams, gro, errs, sent, serr, wb, unk = recv_batch(
                    fd, limit, cguard, rx.now, indices)
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
                        ep = endpoint_cached(endpoints, addr)
                    if admitted and cguard is not None:
                        cguard.set_ticket(data[-32:-16])
                    rx.feed(memoryview(data), seg, ep)
                except Exception:
                    self._internal_error("udp")
            if got < limit:
                break
        if cguard is not None:
            counts = cguard.take_counts()
            if any(counts):
                fast.count_verdicts(counts)
        if unknown:
            rx.c_drops["unknown_index"] += unknown
        if n_reads:
            self._udp_batch_done(rx, limit)

    def datagrams_in(self, grams: list[Datagram]) -> None:
        """Datagrams (one per entry) -> decrypted packets written to the TUN; the same path
        the socket reader takes."""
        rx = self._receive_batch()
        for data, src in grams:
            rx.feed(memoryview(data), 0, src)
        rx.finish()

    def execute(self, actions: Iterable[object]) -> None:
        """Carry out port actions: datagrams and TUN writes batched, the rest to the owner.
        The data-path thread's tables follow first: a handshake response leaves only once
        the thread knows the keys the answer to it will use."""
        if self._dp is not None:
            self._dp.sync()
        out: list[Datagram] = []
        tun: list[bytes] = []
        other: list[object] = []
        for a in actions:
            if isinstance(a, SendDatagram):
                out.append((a.data, a.endpoint))
            elif isinstance(a, WriteTun):
                tun.append(a.packet)
            else:
                other.append(a)
        if out:
            self.send_datagrams(out)
        if tun and self.policy.filter is not None:
            tun = self.policy.filter_writes(tun, self.fast.route, self.clock.monotonic())
        if tun:
            self.write_tun(tun)
        if other and self._on_actions is not None:
            self._on_actions(other)

    def send_datagrams(self, grams: list[Datagram]) -> None:
        """Slow-path datagrams: those the router takes leave elsewhere, the rest from here."""
        if self.router is not None:
            grams = self.router.route(grams)
            if not grams:
                return
        self.udp.send_datagrams(grams)

    def write_tun(self, packets: list[bytes]) -> None:
        """Write plain IP packets to the TUN; with virtio-net headers, TCP segments of a flow
        are coalesced into super-packets first (one write each)."""
        if self.clamp_mss:
            packets = clamp_writes(packets, self.fast.route)
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


__all__ = [
    "DEFAULT_BATCH",
    "Engine",
    "EngineStats",
    "endpoint_of_sockaddr",
    "make_udp_socket",
    "offload_default",
    "set_fwmark",
]
