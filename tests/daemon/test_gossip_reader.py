"""The kernel-mode gossip reader (GossipSocket.readable) and timer (KernelRunner) without
namespaces: a datagram whose handling raises is counted and the reader goes on with the rest of
the batch, so one bad packet neither stops the reader nor loses the other datagrams' actions."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from pathlib import Path
from typing import Any

from meshguard.daemon.daemon_config import DaemonConfig
from meshguard.daemon.gossip_socket import GossipSocket
from meshguard.daemon.kernel_runner import KernelRunner
from meshguard.testing.clock import ManualClock
from meshguard.wireguard.actions import SendDatagram


class ExplodingNode:
    """A node whose receive path raises on one input (a bug reached by bad network input)."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.seen: list[bytes] = []

    def receive(self, now: float, wall: float, data: bytes, src: Any) -> list[Any]:
        self.seen.append(data)
        if data.startswith(b"boom"):
            raise ValueError("a bug reached by bad input")
        return [SendDatagram(b"reply-" + data, src)]


def test_gossip_reader_counts_an_exception_and_keeps_reading() -> None:
    # (loopback UDP is queued on the receiving socket during sendto: nothing to wait for)
    node = ExplodingNode()
    executed: list[Any] = []
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        reader = GossipSocket(rx, ManualClock(), executed.extend)
        reader.node = node  # type: ignore[assignment]
        msgs = [b"one", b"boom-1", b"two", b"boom-2", b"three"]
        for m in msgs:
            tx.sendto(m, rx.getsockname())
        for _ in range(3):
            reader.readable()
        assert node.seen == msgs
        assert node.counters["gossip_reader_errors"] == 2
        assert [a.data for a in executed] == [b"reply-one", b"reply-two", b"reply-three"]
        # and the reader still works afterwards
        tx.sendto(b"four", rx.getsockname())
        reader.readable()
        assert node.seen[-1] == b"four" and executed[-1].data == b"reply-four"
    finally:
        rx.close()
        tx.close()


class ExplodingTicker:
    """A node whose timer work raises every other time."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.ticks = 0

    def tick(self, now: float, wall: float) -> list[Any]:
        self.ticks += 1
        if self.ticks % 2:
            raise ValueError("a bug in timer work")
        return []

    def next_deadline(self) -> float | None:
        return 0.0


def test_kernel_mode_timer_survives_an_exception(tmp_path: Path) -> None:
    d = KernelRunner(DaemonConfig("mg-test", 51820, [], config_dir=tmp_path), ManualClock(),
                     lambda actions: None)
    node = ExplodingTicker()
    d.node = node  # type: ignore[assignment]
    d._dispatch = lambda actions: None  # type: ignore[method-assign]

    async def run() -> None:
        d._on_timer()
        assert d._timer is not None, "the timer was not re-armed after the exception"
        for _ in range(20):
            await asyncio.sleep(0)
        d._timer.cancel()

    asyncio.run(run())
    assert node.ticks >= 3
    assert node.counters["timer_errors"] == (node.ticks + 1) // 2
