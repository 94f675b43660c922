"""Kernel-mode hole punching and relaying at the message level (no WireGuard module here): the
kernel peer updates (endpoint and persistent keepalive, as WG_CMD_SET_DEVICE messages) and
the datagrams two kernel-mode daemons produce for a punch that succeeds, one that times out
and falls back to the relay proxy, a retry from relayed to direct, and attacks on the
rendezvous. The world is tests/daemon/kernelnet.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshguard.daemon.kernel_wg import KernelPeerStats
from meshguard.daemon.mesh_daemon import KERNEL_PUNCH_TIMEOUT
from meshguard.daemon.status import build_status
from meshguard.nat.holepunch import HolePuncher
from meshguard.nat.relay import RelayDelivered
from meshguard.sansio import Endpoint
from meshguard.wire import holepunch as hpwire
from meshguard.wire import relay as relaywire
from meshguard.wire.holepunch import HOLEPUNCH_REQUEST, HOLEPUNCH_TYPES, STAGE_RENDEZVOUS
from meshguard.wire.relay import RELAY_DATA

from .kernelnet import R_EP, KernelSide, World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.close()


class _Counters:
    def counters(self) -> dict[str, int]:
        return {}


def _path(w: World, s: KernelSide, peer: KernelSide, kernel_ep: Endpoint | None
          ) -> tuple[str, str]:
    """(path, endpoint) of `peer` in `s`'s status, with the kernel reporting `kernel_ep`."""
    rep = build_status(cfg=s.daemon.cfg, node=s.node, membership=_Counters(),  # type: ignore[arg-type]
                       name=None, started_at=0.0, wall=w.wall,
                       kernel_stats={peer.wg_key: (w.wall, 1, 1, kernel_ep)},
                       runner_counters=s.runner.counters(), dns_counters=None)
    (m,) = [m for m in rep.members
            if m.identity_key == base64.b64encode(peer.ident).decode()]
    assert m.tunnel
    return m.path, m.endpoint


def _punch(w: World) -> None:
    """Registrations with R, then A's stalled peer B: A asks R, R tells B, B answers."""
    w.relay_ready()
    w.advance(4.5)
    w.tick(w.a)
    assert [d.endpoint for d in w.a.gossip.sent if d.data[0] == HOLEPUNCH_REQUEST] == [R_EP]
    w.run()


def _wait_readable(sock: socket.socket) -> None:
    assert select.select([sock], [], [], 2.0)[0], "nothing arrived"


def _fail_to_relay(w: World) -> None:
    _punch(w)
    w.kernel_says(w.a, w.b, 0.0, 0, w.b.wg_ep)  # no handshake: nothing got through
    w.advance(KERNEL_PUNCH_TIMEOUT)
    w.tick(w.a, w.b)
    w.run()


def test_a_punch_with_the_kernels_handshakes(world: World) -> None:
    w, a, b = world, world.a, world.b
    # configured from the records: the advertised WireGuard endpoint, the normal keepalive
    assert a.updates_for(b.wg_key) == [(b.wg_ep, 25)]
    assert b.updates_for(a.wg_key) == [(a.wg_ep, 25)]
    _punch(w)
    # both kernels point at the other's WireGuard endpoint (the gossip mapping's host, the
    # WireGuard port) with a 1 s keepalive, B on the request and A on the response
    assert a.updates_for(b.wg_key) == [(b.wg_ep, 25), (b.wg_ep, 1)]
    assert b.updates_for(a.wg_key) == [(a.wg_ep, 25), (a.wg_ep, 1)]
    # the datagrams: stage 0 through R only, no probes of meshguard's own
    punch = [(s, hpwire.decode(d.data)) for s, d in w.tap if d.data[0] in HOLEPUNCH_TYPES]
    assert [(s, m.type, m.stage) for s, m in punch] == [
        ("a", HOLEPUNCH_REQUEST, STAGE_RENDEZVOUS), ("r", HOLEPUNCH_REQUEST, STAGE_RENDEZVOUS),
        ("b", hpwire.HOLEPUNCH_RESPONSE, STAGE_RENDEZVOUS),
        ("r", hpwire.HOLEPUNCH_RESPONSE, STAGE_RENDEZVOUS)]
    assert all(d.endpoint in (R_EP, a.gossip_ep, b.gossip_ep) for _, d in w.tap)
    # a poll without a handshake changes nothing
    w.advance(1.0)
    w.kernel_says(a, b, 0.0, 0, b.wg_ep)
    assert len(a.updates_for(b.wg_key)) == 2
    # the kernels' handshakes meet: A's kernel reports one at B's WireGuard endpoint
    w.advance(1.0)
    w.kernel_says(a, b, w.wall, 92, b.wg_ep)
    assert a.updates_for(b.wg_key) == [(b.wg_ep, 25), (b.wg_ep, 1), (b.wg_ep, 25)]
    hp = a.node.holepunch
    assert hp is not None and hp.counters["punch_succeeded"] == 1 and not hp.running(b.ident)
    assert a.node.punched[b.wg_key] == (b.wg_ep, b.wg_ep)
    # B's kernel saw A's handshake come from another port (A's NAT did not keep it): the
    # kernel roamed there on an authenticated packet, so that is the proven endpoint
    roamed = (a.host, 40001)
    w.kernel_says(b, a, w.wall, 92, roamed)
    assert b.updates_for(a.wg_key) == [(a.wg_ep, 25), (a.wg_ep, 1), (roamed, 25)]
    assert b.node.punched[a.wg_key] == (a.wg_ep, roamed)
    assert _path(w, a, b, b.wg_ep) == ("direct", f"{b.host}:51821")
    # later polls, and the hole puncher's timeout, change nothing
    w.advance(KERNEL_PUNCH_TIMEOUT)
    w.kernel_says(a, b, w.wall, 500, b.wg_ep)
    w.tick(a, b)
    w.run()
    assert len(a.updates_for(b.wg_key)) == 3 and len(b.updates_for(a.wg_key)) == 3


def test_a_punch_that_times_out_falls_back_to_the_relay_proxy(world: World) -> None:
    w, a, b = world, world.a, world.b
    _fail_to_relay(w)
    pa, pb = a.paths.proxy.endpoint_of(b.wg_key), b.paths.proxy.endpoint_of(a.wg_key)
    assert pa is not None and pb is not None and pa[0] == pb[0] == "127.0.0.1"
    assert a.updates_for(b.wg_key) == [(b.wg_ep, 25), (b.wg_ep, 1), (pa, 25)]
    assert b.updates_for(a.wg_key) == [(a.wg_ep, 25), (a.wg_ep, 1), (pb, 25)]
    assert len(a.paths.proxy) == 1 and len(b.paths.proxy) == 1
    assert _path(w, a, b, pa) == ("relayed", "198.51.100.10:51821")
    # the kernel's datagram to the proxy goes to R as RelayData for B ...
    a.kernel_sock.sendto(b"\x04kernel-to-b", pa)
    sock = a.paths.proxy._by_key[b.wg_key].sock
    _wait_readable(sock)
    a.paths.proxy.readable(b.wg_key)
    (hop,) = a.gossip.sent
    m = relaywire.decode(hop.data)
    assert hop.endpoint == R_EP and m.payload == b"\x04kernel-to-b"
    assert (m.origin, m.target) == (a.ident, b.ident)
    # ... R passes it on, and B's proxy hands it to B's kernel port, from B's proxy
    w.run()
    data, src = b.kernel_sock.recvfrom(100)
    assert data == b"\x04kernel-to-b" and src == pb
    assert b.paths.proxy.counters["relay_proxy_to_kernel"] == 1
    # and back: B's kernel answers to its proxy
    b.kernel_sock.sendto(b"\x04kernel-to-a", pb)
    _wait_readable(b.paths.proxy._by_key[a.wg_key].sock)
    b.paths.proxy.readable(a.wg_key)
    w.run()
    assert a.kernel_sock.recvfrom(100) == (b"\x04kernel-to-a", pa)
    # the member leaves: its kernel peer and its proxy go
    ms = a.node.membership
    del ms.view[b.ident]  # type: ignore[attr-defined]
    a.runner._dispatch(a.node.reconcile(w.wall))
    assert a.kernel.updates[-1].remove and a.kernel.updates[-1].wg_key == b.wg_key
    assert len(a.paths.proxy) == 0


def test_the_relay_proxy_drops_what_it_must(world: World) -> None:
    w, a, b = world, world.a, world.b
    # a forged RelayData for A, claimed from B through R, before any relaying: the relay
    # core drops it (counted), no proxy is made and nothing reaches the kernel
    forged = relaywire.authenticated_part(relaywire.RelayMessage(
        world.r.ident, b.ident, a.ident, b"\x04forged", int(w.wall) << 20)) + b"\x00" * 16
    assert forged[0] == RELAY_DATA
    a.runner._dispatch(a.node.receive(w.now, w.wall, forged, R_EP))
    rl = a.node.relay
    assert rl is not None and sum(rl.counters.values()) == 1
    assert len(a.paths.proxy) == 0 and a.updates_for(b.wg_key) == [(b.wg_ep, 25)]
    a.kernel_sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        a.kernel_sock.recvfrom(100)
    # a delivery for a peer without a proxy is dropped and counted
    a.paths.deliver([RelayDelivered(b"\x04x", ("0.0.0.0", 7), False)])
    assert a.paths.proxy.counters["relay_proxy_no_peer"] == 1
    with pytest.raises(TimeoutError):
        a.kernel_sock.recvfrom(100)
    # once relayed: only the kernel's port may send through the proxy
    _fail_to_relay(w)
    pa = a.paths.proxy.endpoint_of(b.wg_key)
    assert pa is not None
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        other.bind(("127.0.0.1", 0))
        other.sendto(b"\x04local-process", pa)
        sock = a.paths.proxy._by_key[b.wg_key].sock
        _wait_readable(sock)
        a.paths.proxy.readable(b.wg_key)
    finally:
        other.close()
    assert a.gossip.sent == [] and a.paths.proxy.counters["relay_proxy_foreign"] == 1
    assert a.runner.counters()["relay_proxy_foreign"] == 1


def test_a_relayed_pair_retries_and_goes_direct(world: World) -> None:
    w, a, b = world, world.a, world.b
    _fail_to_relay(w)
    pa, pb = a.paths.proxy.endpoint_of(b.wg_key), b.paths.proxy.endpoint_of(a.wg_key)
    assert pa is not None and pb is not None
    hp = a.node.holepunch
    assert hp is not None
    # the relayed tunnel works (a fresh handshake through the proxy), but proves no direct
    # path: after the backoff A asks again
    w.advance(5.0)
    w.kernel_says(a, b, w.wall, 1000, pa)
    w.tick(a)
    assert not [d for d in a.gossip.sent if d.data[0] == HOLEPUNCH_REQUEST]
    w.advance(6.0)
    w.kernel_says(a, b, w.wall, 1100, pa)
    w.tick(a)
    assert hp.counters["punch_requests_sent"] == 2
    w.run()
    # both kernels try the direct path; the proxies stay (the punch may fail)
    assert a.updates_for(b.wg_key)[-1] == (b.wg_ep, 1)
    assert b.updates_for(a.wg_key)[-1] == (a.wg_ep, 1)
    assert len(a.paths.proxy) == 1
    # while the pair punches, the proxy hands its kernel nothing of that peer
    b.kernel_sock.sendto(b"\x04late", pb)
    _wait_readable(b.paths.proxy._by_key[a.wg_key].sock)
    b.paths.proxy.readable(a.wg_key)
    w.run()
    assert a.paths.proxy.counters["relay_proxy_paused_drops"] == 1
    # the first poll is the baseline; then B's keepalives arrive directly
    w.kernel_says(a, b, w.wall - 30, 1200, b.wg_ep)
    assert a.updates_for(b.wg_key)[-1] == (b.wg_ep, 1)
    w.advance(1.0)
    w.kernel_says(a, b, w.wall - 30, 1232, b.wg_ep)
    # direct: the normal keepalive, the proxy closed, the relay no longer used for B
    assert a.updates_for(b.wg_key)[-1] == (b.wg_ep, 25)
    assert len(a.paths.proxy) == 0
    rl = a.node.relay
    assert rl is not None and b.ident not in rl.via
    assert _path(w, a, b, b.wg_ep) == ("direct", f"{b.host}:51821")
    # a direct handshake now counts as connected: no more punches
    w.advance(30.0)
    w.kernel_says(a, b, w.wall, 1300, b.wg_ep)
    w.tick(a)
    assert hp.counters["punch_requests_sent"] == 2


def test_a_relayed_retry_that_fails_returns_to_the_proxy_quickly(world: World) -> None:
    w, a, b = world, world.a, world.b
    _fail_to_relay(w)
    pa = a.paths.proxy.endpoint_of(b.wg_key)
    assert pa is not None
    w.advance(11.0)
    w.kernel_says(a, b, w.wall, 1000, pa)
    w.tick(a)
    w.run()
    assert a.updates_for(b.wg_key)[-1] == (b.wg_ep, 1)
    w.kernel_says(a, b, w.wall - 60, 1000, b.wg_ep)  # baseline, nothing arrives after it
    w.advance(a.paths.traversal.punch.relayed_window)
    w.kernel_says(a, b, w.wall - 60, 1000, b.wg_ep)
    w.tick(a)
    # back to the proxy with the normal keepalive, long before the session's timeout
    assert a.updates_for(b.wg_key)[-1] == (pa, 25)
    assert a.paths.proxy.endpoint_of(b.wg_key) == pa
    # the session's timeout later changes nothing more
    n = len(a.updates_for(b.wg_key))
    w.advance(KERNEL_PUNCH_TIMEOUT)
    w.tick(a)
    assert len(a.updates_for(b.wg_key)) == n


def test_forged_and_replayed_rendezvous_change_no_kernel_endpoint(world: World) -> None:
    w, a, b = world, world.a, world.b
    _punch(w)
    fwd_req = next(d for s, d in w.tap if s == "r" and d.data[0] == HOLEPUNCH_REQUEST)
    fwd_resp = next(d for s, d in w.tap if s == "r" and d.data[0] != HOLEPUNCH_REQUEST
                    and d.data[0] in HOLEPUNCH_TYPES)
    w.advance(1.0)
    w.kernel_says(a, b, w.wall, 92, b.wg_ep)
    w.kernel_says(b, a, w.wall, 92, a.wg_ep)
    before_a, before_b = list(a.kernel.updates), list(b.kernel.updates)
    bhp, ahp = b.node.holepunch, a.node.holepunch
    assert bhp is not None and ahp is not None

    def deliver(side: KernelSide, data: bytes) -> None:
        side.runner._dispatch(side.node.receive(w.now, w.wall, data, R_EP))

    # replayed: the request R forwarded, and the response, once more
    deliver(b, fwd_req.data)
    deliver(a, fwd_resp.data)
    assert bhp.counters["punch_replayed"] == 1
    assert ahp.counters["punch_replayed"] + ahp.counters["punch_unexpected_response"] == 1
    # forged: the request with B's... endpoints changed (the signature no longer fits)
    m = hpwire.decode(fwd_req.data)
    evil = dataclasses.replace(m, session=m.session + 1, endpoints=(("192.0.2.66", 4444),))
    deliver(b, hpwire.encode(evil))
    assert bhp.counters["punch_bad_signature"] == 1
    # forged: a fresh request signed by a stranger (not a member) in A's name and its own
    from meshguard.crypto.keys import Ed25519PrivateKey

    stranger = HolePuncher(Ed25519PrivateKey(b"\x77" * 32), a.node.holepunch.rng)  # type: ignore[union-attr]
    own = stranger._sign(HOLEPUNCH_REQUEST, STAGE_RENDEZVOUS, b.ident, 99, w.wall,
                         (("192.0.2.66", 4444),))
    deliver(b, own)
    assert bhp.counters["punch_unknown_origin"] == 1
    # nothing of it reached either kernel
    assert a.kernel.updates == before_a and b.kernel.updates == before_b
    assert not bhp.running(a.ident) and not b.paths.traversal.punch.active()


def test_the_runner_reads_the_proxies_and_polls_the_kernel_on_its_loop(world: World) -> None:
    w, a, b = world, world.a, world.b
    polls: list[float] = []

    def kernel_stats() -> list[KernelPeerStats]:
        polls.append(w.now)
        return [KernelPeerStats(b.wg_key, b.wg_ep, 0.0, 0, 0)]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a.paths.close()
        a.runner.paths = a.node.backend = None
        a.kernel.peer_stats = kernel_stats  # type: ignore[method-assign]
        async with contextlib.AsyncExitStack() as stack:
            a.runner.attach(a.node, loop, stack)
            assert a.runner.paths is not None and a.node.backend is a.paths.traversal
            _fail_to_relay(w)
            pa = a.paths.proxy.endpoint_of(b.wg_key)
            assert pa is not None
            a.gossip.sent.clear()
            a.kernel_sock.sendto(b"\x04via-the-loop", pa)
            for _ in range(100):
                await asyncio.sleep(0.02)
                if a.gossip.sent:
                    break
            (hop,) = a.gossip.sent
            assert relaywire.decode(hop.data).payload == b"\x04via-the-loop"
            # the poll runs on its own (every second while punching, else every 2 s)
            for _ in range(30):
                await asyncio.sleep(0.1)
                if polls:
                    break
            assert polls and b.wg_key in a.paths.traversal.latest
        # closed with the runner's stack: the proxy sockets too
        assert len(a.paths.proxy) == 0

    asyncio.run(main())


def test_the_kernel_is_polled_only_when_a_path_may_need_punching(world: World) -> None:
    a = world.a
    hp = a.node.holepunch
    assert hp is not None
    assert a.paths.poll_due(world.now)
    a.paths.observe([])
    assert not a.paths.poll_due(world.now + 1.0) and a.paths.poll_due(world.now + 2.0)
    hp.behind_nat = False  # public, or no STUN answer: nothing to punch
    assert not a.paths.poll_due(world.now + 60.0)
