"""The vocabulary every sans-IO protocol core shares (see docs/architecture.md).

A core never touches a socket, a clock or the OS: the shell hands it the monotonic time `now`,
the wall-clock time `wall` (seconds since the epoch, for signed timestamps) and the bytes it
read, and executes the actions the core returns. Every core has the same three entry points:

    receive(now, wall, data, src) -> list[action]   # one datagram from the network
    tick(now, wall) -> list[action]                 # timers; call at next_deadline()
    next_deadline() -> float | None                 # when tick is due next (monotonic)

The one action that leaves a core for the network is `SendDatagram`; cores add their own
events (e.g. a completed handshake) to their action unions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

Endpoint = tuple[str, int]
"""A UDP endpoint: (host, port). IPv4 hosts are dotted quads, never `::ffff:`-mapped."""


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """Send `data` as one UDP datagram to `endpoint` from the node's port."""

    data: bytes
    endpoint: Endpoint


A_co = TypeVar("A_co", covariant=True)


class Core(Protocol[A_co]):
    """A sans-IO protocol core returning actions of type `A_co`."""

    def receive(self, now: float, wall: float, data: bytes, src: Endpoint) -> Sequence[A_co]: ...

    def tick(self, now: float, wall: float) -> Sequence[A_co]: ...

    def next_deadline(self) -> float | None: ...


def unmap_host(host: str) -> str:
    """`::ffff:1.2.3.4` (an IPv4 peer seen on a dual-stack socket) -> `1.2.3.4`."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


def map_host(host: str) -> str:
    """`1.2.3.4` -> `::ffff:1.2.3.4`, for sending from a dual-stack (AF_INET6) socket."""
    if ":" in host:
        return host
    return "::ffff:" + host
