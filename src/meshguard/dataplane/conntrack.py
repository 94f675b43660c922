"""Connection tracking for the policy filter: the flows this node opened, so their replies pass.

    ct = Conntrack()                         # 65536 flows at most, idle timeouts per protocol
    ct.note(key, proto, now)                 # an outbound TCP/UDP packet (read from the TUN)
    ct.seen(key, now)                        # an inbound packet: is it a reply? (refreshes)

A key is `flow_key(proto, local, local_port, remote, remote_port)`: the outbound packet's
source is the local side; an inbound packet is looked up with its destination as the local
side. Only packets this node sends create entries (what arrives from the tunnel is looked up,
never inserted), and only a TCP SYN or a packet to a peer whose chain denies its replies (the
filter's `track`), so a peer cannot fill the table with the node's answers either. An entry
lives `UDP_TIMEOUT` (180 s) or `TCP_TIMEOUT` (600 s) after the last packet either way; when the
table is full the flow idle longest is evicted (counted). Time is injected: the caller passes
`now`.

The C fast path has the same table (dataplane/_fastpath_policy.c); the two agree on every
verdict while the table is not full (the C table evicts per hash bucket, this one globally).
"""

from __future__ import annotations

from meshguard.policy.table import PROTO_TCP

__all__ = ["CAPACITY", "TCP_TIMEOUT", "UDP_TIMEOUT", "Conntrack", "flow_key"]

CAPACITY = 65536
UDP_TIMEOUT = 180.0
TCP_TIMEOUT = 600.0


def flow_key(proto: int, local: bytes, local_port: int, remote: bytes, remote_port: int) -> bytes:
    """The table's key of one flow (addresses of one family: 4 or 16 bytes)."""
    return (bytes((proto, len(local))) + local + local_port.to_bytes(2, "big") + remote
            + remote_port.to_bytes(2, "big"))


class Conntrack:
    """Flows by key -> (expiry, timeout); insertion order is idle order (oldest first)."""

    __slots__ = ("capacity", "evicted", "flows", "tcp_timeout", "udp_timeout")

    def __init__(self, capacity: int = CAPACITY, udp_timeout: float = UDP_TIMEOUT,
                 tcp_timeout: float = TCP_TIMEOUT) -> None:
        if capacity < 1:
            raise ValueError("conntrack capacity must be positive")
        self.capacity = capacity
        self.udp_timeout = udp_timeout
        self.tcp_timeout = tcp_timeout
        self.flows: dict[bytes, tuple[float, float]] = {}
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.flows)

    def note(self, key: bytes, proto: int, now: float) -> None:
        """An outbound packet of the flow: create or refresh it."""
        flows = self.flows
        timeout = self.tcp_timeout if proto == PROTO_TCP else self.udp_timeout
        if flows.pop(key, None) is None and len(flows) >= self.capacity:
            oldest = next(iter(flows))
            if flows[oldest][0] > now:
                self.evicted += 1
            del flows[oldest]
        flows[key] = (now + timeout, timeout)

    def seen(self, key: bytes, now: float) -> bool:
        """An inbound packet: True when it belongs to a live flow (which it refreshes)."""
        flows = self.flows
        entry = flows.get(key)
        if entry is None:
            return False
        del flows[key]
        if now >= entry[0]:
            return False  # expired: gone
        flows[key] = (now + entry[1], entry[1])
        return True

    def clear(self) -> None:
        self.flows.clear()
