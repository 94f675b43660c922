"""One wake-up's worth of received datagrams, split between the fast and the slow path.

Transport messages are opened in runs of one keypair (fastpath.open_batch, in C when built)
and put through the receive policy (wireguard/transport.py: accept_batch); every other
datagram goes to the slow path in arrival order, with the TUN writes and the bookkeeping
gathered so far flushed first, so a handshake response is never processed ahead of the
transport data that came before it. The bookkeeping (Device.note_received) runs once per
keypair and flush, the drop counts once per wake-up. With a policy in force, each run's
decrypted packets are judged (dataplane/policy_filter.py) before they join the TUN writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from meshguard.dataplane import fastpath
from meshguard.dataplane.cipher_cache import CipherCache
from meshguard.dataplane.policy_filter import PolicyFilterLike
from meshguard.dataplane.ports import FastPathPort, SlowPathPort
from meshguard.sansio import Endpoint
from meshguard.wireguard.keypair import Keypair
from meshguard.wireguard.peer import Peer
from meshguard.wireguard.transport import DROP_REASONS, accept_batch

__all__ = ["ReceiveBatch"]

_TRANSPORT_TYPE = b"\x04\x00\x00\x00"
_TRANSPORT_MIN = 32  # header + tag (a keepalive)


class ReceiveBatch:
    """Received buffers in, TUN writes and actions out (`feed` each one, then `finish`)."""

    __slots__ = ("acc", "actions", "c_drops", "ciphers", "execute", "fast", "last_index",
                 "last_kp", "now", "policy", "slow", "src_ok", "tun", "wall", "write_tun")

    def __init__(
        self,
        fast: FastPathPort,
        slow: SlowPathPort,
        ciphers: CipherCache,
        write_tun: Callable[[list[bytes]], None],
        execute: Callable[[Iterable[object]], None],
        now: float,
        wall: float,
        policy: PolicyFilterLike | None = None,
    ) -> None:
        self.fast = fast
        self.slow = slow
        self.ciphers = ciphers
        self.write_tun = write_tun
        self.execute = execute
        self.now, self.wall = now, wall
        self.policy = policy  # judges each run's packets before the TUN write
        self.tun: list[bytes] = []
        # keypair -> [packets, bytes, keepalives, last source]
        self.acc: dict[Keypair, tuple[int, int, int, Endpoint]] = {}
        self.c_drops = dict.fromkeys(DROP_REASONS, 0)
        self.actions: list[object] = []
        # (peer, inner source) -> allowed, for this wake-up only (routes may change between)
        self.src_ok: dict[tuple[Peer, bytes], bool] = {}
        self.last_index = -1
        self.last_kp: Keypair | None = None

    def flush(self) -> None:
        if self.tun:
            self.write_tun(self.tun)
            self.tun = []
        if self.acc:
            fast, now, wall = self.fast, self.now, self.wall
            for k, (n, nbytes, keep, src) in self.acc.items():
                self.actions.extend(
                    fast.note_received(now, k, n, nbytes, src, n_keepalive=keep, wall=wall)
                )
            self.acc.clear()

    def feed(self, data: memoryview, seg: int, src: Endpoint) -> None:
        """One received buffer: a datagram, or (seg > 0) a GRO train cut every seg bytes."""
        n = len(data)
        pos = 0
        drops = self.c_drops
        if not n:  # an empty datagram is garbage for the slow path to count
            self.flush()
            self.actions.extend(self.slow.receive(self.now, self.wall, b"", src))
            return
        while pos < n:
            dlen = n - pos
            if 0 < seg < dlen:
                dlen = seg
            if dlen < _TRANSPORT_MIN or data[pos : pos + 4] != _TRANSPORT_TYPE:
                self.flush()
                self.last_index = -1
                self.actions.extend(self.slow.receive(
                    self.now, self.wall, bytes(data[pos : pos + dlen]), src))
                pos += dlen
                continue
            receiver = int.from_bytes(data[pos + 4 : pos + 8], "little")
            if receiver != self.last_index:
                self.last_kp = self.fast.keypair_for_receive(receiver, self.now)
                self.last_index = receiver
            kp = self.last_kp
            if kp is None:
                drops["unknown_index"] += 1
                pos += dlen
                continue
            end, results = fastpath.open_batch(
                self.ciphers.get(kp.receive), data, seg, receiver, pos)
            if end <= pos:  # cannot happen (the header was checked); never loop forever
                pos += dlen
                continue
            pos = end
            start = len(self.tun)
            npk, nbytes, keep = accept_batch(
                kp, results, self.fast.source_allowed, self.src_ok, self.tun, drops)
            if self.policy is not None and len(self.tun) > start:
                self.policy.filter(kp.peer.public_key.raw, self.tun, start, self.now)
            if npk:
                a = self.acc.get(kp)
                if a is None:
                    self.acc[kp] = (npk, nbytes, keep, src)
                else:
                    self.acc[kp] = (a[0] + npk, a[1] + nbytes, a[2] + keep, src)

    def finish(self) -> None:
        self.flush()
        fast = self.fast
        for reason, n in self.c_drops.items():
            if n:
                fast.note_dropped(reason, n)
        if self.actions:
            self.execute(self.actions)
