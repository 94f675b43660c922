"""The TUN side of the engine's data path: TUN reads sealed into transport messages.

`seal_reads` is `Engine._tun_in` (dataplane/engine.py): the asyncio path's TUN reader and the
data-path thread's returns (packets without a session, dataplane/datapath_thread.py) both end
here. Reads are grouped by peer; each group costs one route/keypair lookup and one bookkeeping
call (the fast-path port's prepare_send_peer and note_sent), each read one counter reservation
and one split-and-seal call (`fastpath.seal_segments`). TCP SYNs to a peer with a path MTU get
their MSS clamped first (dataplane/mss_clamp.py). Reads for a peer without a usable session go
to the slow path, which queues their packets and starts a handshake; packets it cannot parse
it counts (bad_inner). With a policy in force every routed read's flow is tracked
first (dataplane/conntrack.py; a TCP SYN always, anything else unless the peer's chain lets
its replies in anyway), so the replies to it pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshguard.dataplane import fastpath
from meshguard.dataplane.mss_clamp import clamp_read
from meshguard.dataplane.offload import split_tun_read
from meshguard.dataplane.udp_io import Sealed
from meshguard.dataplane.vnet import VNET_HDR_LEN
from meshguard.wireguard.peer import Peer

if TYPE_CHECKING:
    from meshguard.dataplane.engine import Engine

__all__ = ["seal_reads"]


def seal_reads(engine: Engine, reads: list[bytes], vnet: bool) -> None:
    """TUN reads (virtio-net header + packet when `vnet`) -> sealed transport messages, sent
    from the engine's socket; the slow path's actions executed."""
    fast = engine.fast
    c = engine.clock
    now, wall = c.monotonic(), c.wall()
    groups: dict[Peer, list[bytes]] = {}
    rest: list[bytes] = []
    route = fast.route
    no_route = 0
    off = VNET_HDR_LEN if vnet else 0
    pf = engine.policy.filter
    for r in reads:
        n = len(r) - off
        if n <= 0:
            if vnet:
                engine.stats.tun_bad_reads += 1
            continue
        version = r[off] >> 4
        if version == 4 and n >= 20:
            dst = r[off + 16 : off + 20]
        elif version == 6 and n >= 40:
            dst = r[off + 24 : off + 40]
        else:
            rest.append(r)  # the slow path counts it (bad_inner)
            continue
        peer = route(dst)
        if peer is None:
            no_route += 1
            continue
        if peer.clamp_mtu:
            r = clamp_read(r, peer, vnet)
        group = groups.get(peer)
        if group is None:
            groups[peer] = [r]
        else:
            group.append(r)
    if no_route:
        fast.note_dropped("no_route", no_route)
    out: list[Sealed] = []
    actions: list[object] = []
    prepare = fast.prepare_send_peer
    ciphers = engine._ciphers
    count = fastpath.segment_count
    seal = fastpath.seal_segments
    st = engine.stats
    for peer, rs in groups.items():
        if pf is not None:  # flows this node opens: their replies pass the policy
            pf.track(rs, off, now, peer.public_key.raw)
        b = prepare(now, peer)
        if b is None:
            rest.extend(rs)
            continue
        cipher = ciphers.get(b.cipher)
        receiver = b.receiver_index
        reserve = b.reserve
        ep = b.endpoint
        n_pk = n_bytes = 0
        for r in rs:
            try:
                k = count(r, vnet)
            except ValueError:
                st.tun_bad_reads += 1
                continue
            first = reserve(k)
            if first is None:
                rest.append(r)
                continue
            data, seg, k = seal(cipher, receiver, first, r, vnet)
            out.append((data, seg, k, ep))
            n_pk += k
            n_bytes += len(data)
            if k > 1:
                st.tun_gso_reads += 1
        if n_pk:
            actions += fast.note_sent(now, peer, n_pk, n_bytes, wall=wall)
    if out:
        engine.udp.send_sealed(out)
    if rest:
        send_packet = engine.slow.send_packet
        for r in rest:
            if vnet:
                try:
                    pkts = split_tun_read(r)
                except ValueError:
                    st.tun_bad_reads += 1
                    continue
            else:
                pkts = [r]
            for pkt in pkts:
                actions += send_packet(now, wall, pkt)
    if actions:
        engine.execute(actions)
