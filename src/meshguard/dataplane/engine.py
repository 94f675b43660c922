"""The batched userspace data path: one UDP socket and one TUN fd on an asyncio loop.

    engine = Engine(device, tun_fd, clock)
    engine.bind(51820)          # dual-stack UDP socket (IPv4 and IPv6 outside)
    engine.start(loop)          # add_reader on both fds, timer at device.next_deadline()
    ...
    engine.kick()               # after a configuration change (timers may have moved)
    engine.close()

On every readiness wake-up the engine drains up to `batch` packets (until EAGAIN) and hands
the whole list to one function (`tun_packets_in` / `datagrams_in`), which returns lists of
outgoing datagrams and TUN writes (`send_datagrams` / `write_tun`). These list-taking functions
are the seams for GSO/GRO and virtio-net offloads.

Transport data (type 4 in, IP packets out) takes the Device's fast path (route and keypair
once per peer and batch, replay/AEAD/source checks per packet, bookkeeping once per batch);
handshakes, cookies, timers, packets for peers without a session and everything else go
through the sans-IO slow path (`receive_datagram`, `send_packet`, `tick`), whose actions the
engine executes. The engine owns no protocol policy. Socket errors are counted per packet and
never raised into the loop; a bug below is logged and counted (`internal_errors`).

Seams for offloads (override in a subclass): `_tun_readable` (read + split super-packets),
`write_tun(packets)` (coalesce), `_udp_readable` (GRO), `send_datagrams(datagrams)` (GSO; the
datagrams of one peer arrive consecutively with the same endpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from meshguard.clock import Clock, SystemClock
from meshguard.wireguard.actions import SendDatagram, WriteTun
from meshguard.wireguard.device import Device, inner_packet

log = logging.getLogger(__name__)

Endpoint = tuple[str, int]
Datagram = tuple[bytes, Endpoint]

DEFAULT_BATCH = 64  # packets drained per wake-up (PERF.md: 64 worked)
TUN_READ_SIZE = 65535
UDP_READ_SIZE = 65535
SOCKET_BUFFER = 4 * 1024 * 1024
SO_SNDBUFFORCE = 32  # not named in Python 3.11's socket module
SO_RCVBUFFORCE = 33
SO_MARK = 36

_TRANSPORT_HEADER = struct.Struct("<IIQ")
_NONCE = struct.Struct("<4xQ")
_TRANSPORT_TYPE = b"\x04\x00\x00\x00"
_TRANSPORT_MIN = 32  # header + tag (a keepalive)
_ZEROS = bytes(16)
# read errors meaning the TUN interface no longer exists (EBADFD after `ip link del`)
_TUN_GONE = frozenset({errno.EBADFD, errno.EBADF, errno.ENXIO, errno.ENODEV})


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

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _unmap(host: str) -> str:
    """`::ffff:1.2.3.4` (an IPv4 peer seen on the dual-stack socket) -> `1.2.3.4`."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


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


class Engine:
    def __init__(
        self,
        device: Device,
        tun_fd: int,
        clock: Clock | None = None,
        batch: int = DEFAULT_BATCH,
        on_actions: Callable[[list[Any]], None] | None = None,
        on_tun_gone: Callable[[OSError], None] | None = None,
    ) -> None:
        self.device = device
        self.tun_fd = tun_fd
        self.clock: Clock = clock or SystemClock()
        self.batch = batch
        self.stats = EngineStats()
        self.sock: socket.socket | None = None
        self.port = 0
        self.fwmark = 0
        self._family = socket.AF_INET6
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._addr_cache: dict[Endpoint, tuple[Any, ...]] = {}
        self._ep_cache: dict[tuple[Any, ...], Endpoint] = {}  # sockaddr -> Endpoint
        self._on_actions = on_actions  # other actions (HandshakeCompleted, ...) for the owner
        self._on_tun_gone = on_tun_gone  # the TUN fd reports the interface deleted

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
        if self._loop is not None:
            self._loop.add_reader(new.fileno(), self._udp_readable)
        if old is not None:
            old.close()
        return self.port

    def set_fwmark(self, mark: int) -> None:
        self.fwmark = mark
        if self.sock is not None:
            set_fwmark(self.sock, mark)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        if self.sock is None:
            self.bind(0)
        assert self.sock is not None
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

    # --- readiness handlers: drain up to `batch` then process the batch ---------------------

    def _tun_readable(self) -> None:
        packets: list[bytes] = []
        read = os.read
        fd = self.tun_fd
        for _ in range(self.batch):
            try:
                packets.append(read(fd, TUN_READ_SIZE))
            except BlockingIOError:
                break
            except OSError as exc:
                self.stats.tun_read_errors += 1
                if exc.errno in _TUN_GONE:
                    self._tun_gone(exc)
                    return
                break
        if packets:
            self.stats.tun_rx += len(packets)
            self.stats.tun_rx_batches += 1
            try:
                self.tun_packets_in(packets)
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

    def _udp_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        grams: list[Datagram] = []
        recv = sock.recvfrom
        endpoints = self._ep_cache
        for _ in range(self.batch):
            try:
                data, addr = recv(UDP_READ_SIZE)
            except BlockingIOError:
                break
            except OSError:
                # e.g. ICMP errors surfacing as ECONNREFUSED on the next call
                self.stats.udp_recv_errors += 1
                continue
            ep = endpoints.get(addr)
            if ep is None:
                if len(endpoints) > 4096:
                    endpoints.clear()
                ep = endpoints[addr] = (_unmap(addr[0]), addr[1])
            grams.append((data, ep))
        if grams:
            self.stats.udp_rx += len(grams)
            self.stats.udp_rx_batches += 1
            try:
                self.datagrams_in(grams)
            except Exception:
                self._internal_error("udp")
            self._arm()

    # --- batch processing (seams for offloads) ---------------------------------------------

    def tun_packets_in(self, packets: list[bytes]) -> None:
        """IP packets read from the TUN -> sealed transport datagrams.

        Packets are grouped by peer; each group costs one route/keypair lookup, one counter
        reservation and one bookkeeping call (Device fast path). Packets for a peer without a
        usable session go to the slow path, which queues them and starts a handshake.
        """
        dev = self.device
        c = self.clock
        now, wall = c.monotonic(), c.wall()
        groups: dict[Any, list[bytes]] = {}
        rest: list[bytes] = []
        route = dev.route
        no_route = 0
        for pkt in packets:
            if not pkt:
                continue
            version = pkt[0] >> 4
            if version == 4 and len(pkt) >= 20:
                dst = pkt[16:20]
            elif version == 6 and len(pkt) >= 40:
                dst = pkt[24:40]
            else:
                rest.append(pkt)  # the slow path counts it (bad_inner)
                continue
            peer = route(dst)
            if peer is None:
                no_route += 1
                continue
            group = groups.get(peer)
            if group is None:
                groups[peer] = [pkt]
            else:
                group.append(pkt)
        if no_route:
            dev.note_dropped("no_route", no_route)
        out: list[Datagram] = []
        actions: list[Any] = []
        prepare = dev.prepare_send_peer
        for peer, pkts in groups.items():
            b = prepare(now, peer)
            first = b.reserve(len(pkts)) if b is not None else None
            if b is None or first is None:
                rest.extend(pkts)
                continue
            sealed = seal_batch(b.cipher.aead, b.receiver_index, first, pkts)
            ep = b.endpoint
            out.extend((d, ep) for d in sealed)
            actions += dev.note_sent(now, peer, len(sealed), sum(map(len, sealed)), wall=wall)
        if out:
            self.send_datagrams(out)
        send_packet = dev.send_packet
        for pkt in rest:
            actions += send_packet(now, wall, pkt)
        if actions:
            self.execute(actions)

    def datagrams_in(self, grams: list[Datagram]) -> None:
        """Datagrams from the UDP socket -> decrypted packets written to the TUN.

        Transport messages are opened on the fast path (replay check, AEAD, replay accept,
        inner source check) with one bookkeeping call per keypair and batch; anything else
        (handshakes, cookies, garbage) goes to the slow path in arrival order.
        """
        dev = self.device
        c = self.clock
        now, wall = c.monotonic(), c.wall()
        tun: list[bytes] = []
        # keypair -> [packets, bytes, keepalives, last source]
        acc: dict[Any, list[Any]] = {}
        drops = {"unknown_index": 0, "replay": 0, "bad_auth": 0, "bad_inner": 0, "bad_source": 0}
        actions: list[Any] = []
        get_kp = dev.keypair_for_receive
        allowed = dev.source_allowed
        # (peer, inner source) -> allowed, for this batch only (routes may change between)
        src_ok: dict[tuple[Any, bytes], bool] = {}
        unpack = _TRANSPORT_HEADER.unpack_from
        last_index = -1
        kp: Any = None

        def flush() -> None:
            if tun:
                self.write_tun(tun)
                tun.clear()
            for k, (n, nbytes, keep, src) in acc.items():
                actions.extend(
                    dev.note_received(now, k, n, nbytes, src, n_keepalive=keep, wall=wall)
                )
            acc.clear()

        for data, src in grams:
            if len(data) < _TRANSPORT_MIN or data[:4] != _TRANSPORT_TYPE:
                flush()
                actions.extend(dev.receive_datagram(now, wall, data, src))
                last_index = -1
                continue
            _, receiver, counter = unpack(data)
            if receiver != last_index:
                kp = get_kp(receiver)
                last_index = receiver
                if kp is not None and kp.receive_expired(now):
                    kp = None
            if kp is None:
                drops["unknown_index"] += 1
                continue
            replay = kp.replay
            if not replay.check(counter):
                drops["replay"] += 1
                continue
            pt = kp.receive.open_or_none(counter, data[16:])
            if pt is None:
                drops["bad_auth"] += 1
                continue
            if not replay.accept(counter):
                drops["replay"] += 1
                continue
            a = acc.get(kp)
            if a is None:
                a = acc[kp] = [0, 0, 0, src]
            a[0] += 1
            a[1] += len(data)
            a[3] = src
            if not pt:
                a[2] += 1
                continue
            inner = inner_packet(pt)
            if inner is None:
                drops["bad_inner"] += 1
                continue
            key = (kp.peer, inner[1])
            ok = src_ok.get(key)
            if ok is None:
                ok = src_ok[key] = allowed(kp.peer, inner[1])
            if ok:
                tun.append(inner[0])
            else:
                drops["bad_source"] += 1
        flush()
        for reason, n in drops.items():
            if n:
                dev.note_dropped(reason, n)
        if actions:
            self.execute(actions)

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
        write = os.write
        fd = self.tun_fd
        n = 0
        for pkt in packets:
            try:
                write(fd, pkt)
                n += 1
            except OSError:
                self.stats.tun_write_errors += 1
        self.stats.tun_tx += n


__all__ = ["DEFAULT_BATCH", "Engine", "EngineStats", "make_udp_socket", "seal_batch"]
