#!/usr/bin/env python3
"""Bench-only prototype: `meshguard wireguard IFNAME -f` with the offload modules plugged into
the engine's seams, to measure what they buy before the engine adopts them.

    .venv/bin/python bench/offload_wg.py IFNAME      (root; configure with `wg` as usual)

TUN opened with IFF_VNET_HDR and TSO (`vnet.enable_offloads`), reads split by
`VnetTunIO.read_batch`, writes coalesced by `VnetTunIO.write_batch`, UDP receive through
`GroReceiver`, sends grouped per endpoint through `UdpBatchSender` (GSO). The real integration
belongs in the engine; this file swaps two names in `wg_interface` for its own process only.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from meshguard.daemon import wg_interface
from meshguard.dataplane import engine as eng
from meshguard.dataplane.tun import DEFAULT_MTU, TunDevice
from meshguard.dataplane.udp_offload import GroReceiver, UdpBatchSender, set_buffer_sizes
from meshguard.dataplane.vnet import IFF_VNET_HDR, VnetTunIO, enable_offloads

_open = TunDevice.open


class _VnetTun:
    @staticmethod
    def open(name: str, mtu: int | None = DEFAULT_MTU, extra_flags: int = 0,
             exclusive: bool = True) -> TunDevice:
        return _open(name, mtu=mtu, extra_flags=extra_flags | IFF_VNET_HDR, exclusive=exclusive)


class OffloadEngine(eng.Engine):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.offload_state = enable_offloads(self.tun_fd)
        self._vio = VnetTunIO(self.tun_fd, self.offload_state)
        self._gro: GroReceiver | None = None
        self._gso: UdpBatchSender | None = None

    def bind(self, port: int) -> int:
        r = super().bind(port)
        assert self.sock is not None
        set_buffer_sizes(self.sock, eng.SOCKET_BUFFER)
        self._gro = GroReceiver(self.sock)
        self._gso = UdpBatchSender(self.sock)
        return r

    def _tun_readable(self) -> None:
        packets = self._vio.read_batch(self.batch)
        if packets:
            self.stats.tun_rx += len(packets)
            self.stats.tun_rx_batches += 1
            try:
                self.tun_packets_in(packets)
            except Exception:
                self._internal_error("tun")
            self._arm()

    def write_tun(self, packets: list[bytes]) -> None:
        self._vio.write_batch(packets)
        self.stats.tun_tx += len(packets)

    def _udp_readable(self) -> None:
        recv = self._gro
        if self.sock is None or recv is None:
            return
        grams: list[eng.Datagram] = []
        endpoints = self._ep_cache
        while len(grams) < self.batch:
            try:
                dgrams, addr = recv.recv()
            except BlockingIOError:
                break
            except OSError:
                self.stats.udp_recv_errors += 1
                continue
            ep = endpoints.get(addr)
            if ep is None:
                ep = endpoints[addr] = (eng._unmap(addr[0]), addr[1])
            grams.extend((bytes(d), ep) for d in dgrams)
        if grams:
            self.stats.udp_rx += len(grams)
            self.stats.udp_rx_batches += 1
            try:
                self.datagrams_in(grams)
            except Exception:
                self._internal_error("udp")
            self._arm()

    def send_datagrams(self, grams: list[eng.Datagram]) -> None:
        sender = self._gso
        if self.sock is None or sender is None:
            return
        n = len(grams)
        i = 0
        while i < n:
            ep = grams[i][1]
            j = i + 1
            while j < n and grams[j][1] == ep:
                j += 1
            try:
                self.stats.udp_tx += sender.send([g[0] for g in grams[i:j]], self._sockaddr(ep))
            except (OSError, ValueError):
                self.stats.udp_send_errors += j - i
            i = j


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: offload_wg.py IFNAME", file=sys.stderr)
        return 2
    wg_interface.TunDevice = _VnetTun  # type: ignore[misc,assignment]
    wg_interface.Engine = OffloadEngine  # type: ignore[misc]
    asyncio.run(wg_interface.serve(sys.argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
