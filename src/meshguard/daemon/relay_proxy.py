"""Kernel mode's relay proxy: the kernel can only send UDP to an endpoint, so a relayed peer's
kernel endpoint is a loopback socket of this process, one per relayed peer.

* What the kernel sends to a peer's proxy socket (from 127.0.0.1 and the WireGuard port: any
  other source is dropped and counted) is wrapped into RelayData (nat/relay.py `wrap`) to the
  peer's relay and leaves from the gossip socket.
* RelayData the relay core delivered for a peer (`RelayDelivered`, already checked: MAC,
  end-to-end tag, replay window) goes from that peer's proxy socket to the kernel's WireGuard
  port on 127.0.0.1, so the kernel sees it come from the proxy and answers there. A delivery
  for a peer without a proxy, or for a peer being hole-punched (its kernel endpoint is the
  untried direct path, nat/kernel_punch.py), is dropped and counted.

Bounded: a proxy exists only for a peer of the node (an admitted member) whose configured
endpoint is a relay placeholder, at most one per peer and `max_proxies` in all, and it is
closed when the peer is removed or goes direct (daemon/kernel_paths.py decides).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from meshguard.nat.relay import RelayDelivered
from meshguard.sansio import Endpoint, SendDatagram

log = logging.getLogger("meshguard.daemon")

LOOPBACK = "127.0.0.1"
MAX_PROXIES = 256
READ_BATCH = 64  # datagrams read per readable event


@dataclass
class _Proxy:
    wg_key: bytes
    placeholder: Endpoint
    sock: socket.socket
    endpoint: Endpoint  # where the kernel sends the peer's datagrams


class RelayProxy:
    """`wrap` is the relay core's (placeholder, data) -> RelayData hop; `send` sends it from
    the gossip socket; `paused(wg_key)` says whether the peer is being hole-punched; `loop`,
    if given, reads the proxy sockets (tests call `readable` themselves)."""

    def __init__(self, wg_port: int, wrap: Callable[[Endpoint, bytes], SendDatagram | None],
                 send: Callable[[list[SendDatagram]], None],
                 paused: Callable[[bytes], bool] = lambda k: False,
                 loop: asyncio.AbstractEventLoop | None = None,
                 max_proxies: int = MAX_PROXIES) -> None:
        self.kernel = (LOOPBACK, wg_port)
        self.wrap = wrap
        self.send = send
        self.paused = paused
        self.loop = loop
        self.max_proxies = max_proxies
        self.counters: Counter[str] = Counter()
        self._by_key: dict[bytes, _Proxy] = {}
        self._by_placeholder: dict[Endpoint, _Proxy] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def endpoint_of(self, wg_key: bytes) -> Endpoint | None:
        p = self._by_key.get(wg_key)
        return None if p is None else p.endpoint

    def ensure(self, wg_key: bytes, placeholder: Endpoint) -> Endpoint | None:
        """The loopback endpoint of `wg_key`'s proxy (created if needed), or None if the
        limit is reached or no socket could be made."""
        p = self._by_key.get(wg_key)
        if p is not None and p.placeholder == placeholder:
            return p.endpoint
        if p is not None:
            self.remove(wg_key)
        if len(self._by_key) >= self.max_proxies:
            self.counters["relay_proxy_limit"] += 1
            return None
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind((LOOPBACK, 0))
        except OSError as exc:
            log.warning("relay proxy: cannot open a loopback socket: %s", exc)
            self.counters["relay_proxy_socket_errors"] += 1
            return None
        p = _Proxy(wg_key, placeholder, sock, (LOOPBACK, int(sock.getsockname()[1])))
        self._by_key[wg_key] = p
        self._by_placeholder[placeholder] = p
        if self.loop is not None:
            self.loop.add_reader(sock.fileno(), self.readable, wg_key)
        self.counters["relay_proxies_opened"] += 1
        return p.endpoint

    def remove(self, wg_key: bytes) -> None:
        p = self._by_key.pop(wg_key, None)
        if p is None:
            return
        if self._by_placeholder.get(p.placeholder) is p:
            del self._by_placeholder[p.placeholder]
        if self.loop is not None:
            self.loop.remove_reader(p.sock.fileno())
        p.sock.close()
        self.counters["relay_proxies_closed"] += 1

    def close(self) -> None:
        for k in list(self._by_key):
            self.remove(k)

    def readable(self, wg_key: bytes) -> None:
        """The kernel sent to `wg_key`'s proxy: wrap each datagram for the peer's relay."""
        p = self._by_key.get(wg_key)
        if p is None:
            return
        out: list[SendDatagram] = []
        for _ in range(READ_BATCH):
            try:
                data, addr = p.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.counters["relay_proxy_recv_errors"] += 1
                break
            if (addr[0], addr[1]) != self.kernel:
                self.counters["relay_proxy_foreign"] += 1  # only the kernel's port may send
                continue
            hop = self.wrap(p.placeholder, data)
            if hop is None:
                self.counters["relay_proxy_unwrapped"] += 1
                continue
            self.counters["relay_proxy_to_relay"] += 1
            out.append(hop)
        if out:
            self.send(out)

    def deliver(self, delivered: list[RelayDelivered]) -> None:
        """Relayed datagrams the relay core accepted: each to the kernel from its proxy."""
        for d in delivered:
            p = self._by_placeholder.get(d.source)
            if p is None:
                self.counters["relay_proxy_no_peer"] += 1
                continue
            if self.paused(p.wg_key):
                self.counters["relay_proxy_paused_drops"] += 1
                continue
            try:
                p.sock.sendto(d.payload, self.kernel)
            except OSError:
                self.counters["relay_proxy_send_errors"] += 1
                continue
            self.counters["relay_proxy_to_kernel"] += 1
