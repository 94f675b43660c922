"""The gossip socket of a split-port node (kernel mode, or userspace `split_port`): gossip and
STUN on port + 1 (kernel_wg.py explains the port design), read here and handed to the node,
while WireGuard has a port of its own."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from meshguard.clock import Clock
from meshguard.daemon.daemon_config import bind_error
from meshguard.dataplane.engine import make_udp_socket
from meshguard.dataplane.udp_io import sockaddr_of
from meshguard.mesh.demux import Kind, classify
from meshguard.mesh.node import Action, MeshNode
from meshguard.sansio import unmap_host
from meshguard.wireguard.actions import SendDatagram

log = logging.getLogger("meshguard.daemon")

GOSSIP_ERROR_LOG_INTERVAL = 60.0  # seconds between warnings about datagrams that raised
READ_BATCH = 64  # datagrams read per readable event, so the loop stays responsive


class ErrorThrottle:
    """Warn about a bug reached by network input or timers at most once per interval: a flood
    of bad packets must not turn into a flood of tracebacks."""

    def __init__(self, interval: float = GOSSIP_ERROR_LOG_INTERVAL) -> None:
        self.interval = interval
        self._last = float("-inf")

    def due(self, now: float) -> bool:
        if now - self._last >= self.interval:
            self._last = now
            return True
        return False


class GossipSocket:
    """Reads gossip datagrams into the node and sends the node's datagrams from this port.

    `deliver` executes the actions the node returns for a batch of reads (the mode's runner).
    """

    def __init__(self, sock: socket.socket, clock: Clock,
                 deliver: Callable[[list[Action]], None], *, drop_wireguard: bool = False,
                 throttle: ErrorThrottle | None = None) -> None:
        self.sock = sock
        self.clock = clock
        self.deliver = deliver
        # a split-port userspace node's gossip port is not WireGuard's: drop it as garbage
        self.drop_wireguard = drop_wireguard
        self.throttle = throttle or ErrorThrottle()
        self.node: MeshNode | None = None

    @classmethod
    def bind(cls, port: int, clock: Clock, deliver: Callable[[list[Action]], None], *,
             drop_wireguard: bool = False, throttle: ErrorThrottle | None = None
             ) -> GossipSocket:
        try:
            sock = make_udp_socket(port)
        except OSError as exc:
            raise bind_error(exc, port) from None
        return cls(sock, clock, deliver, drop_wireguard=drop_wireguard, throttle=throttle)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send(self, actions: list[Action]) -> list[Action]:
        """Send every SendDatagram in `actions`; return the other actions, in order."""
        other: list[Action] = []
        sock = self.sock
        for a in actions:
            if isinstance(a, SendDatagram):
                try:
                    sock.sendto(a.data, sockaddr_of(sock.family, a.endpoint))
                except OSError:
                    if self.node is not None:
                        self.node.counters["udp_send_errors"] += 1
            else:
                other.append(a)
        return other

    def readable(self) -> None:
        sock = self.sock
        node = self.node
        if node is None:
            return
        out: list[Action] = []
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(65535)
            except BlockingIOError:
                break
            except OSError:
                node.counters["udp_recv_errors"] += 1
                continue
            host = unmap_host(addr[0])
            if self.drop_wireguard and classify(data) is Kind.WIREGUARD:
                node.counters["garbage_dropped"] += 1  # not WireGuard's port
                continue
            c = self.clock
            try:
                out += node.receive(c.monotonic(), c.wall(), data, (host, addr[1]))
            except Exception:
                # a bug reached by network input: count it, warn now and then, read on
                node.counters["gossip_reader_errors"] += 1
                if self.throttle.due(c.monotonic()):
                    log.exception("gossip reader: a datagram from %s raised (%d so far)",
                                  host, node.counters["gossip_reader_errors"])
        self.deliver(out)
