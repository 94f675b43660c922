"""Real daemons behind two port-restricted cone NATs punch a direct tunnel (marked netns).

Topology (every name carries a random suffix; everything is removed at the end):

    hub: bridge br0 (the "internet", 203.0.113.0/24)
      ├─ pub   203.0.113.10   seed S (public) + coturn STUN :3478
      ├─ natA  203.0.113.21   nftables masquerade, INPUT drop ── hostA 192.168.10.2 (node A)
      └─ natB  203.0.113.22   nftables masquerade, INPUT drop ── hostB 192.168.20.2 (node B)

The NAT rules are those of the NAT lab guide (docs/nat-testbed.md#base-ruleset, type `cone`):
endpoint-independent, port-preserving mapping; address-and-port-dependent filtering, and
unsolicited inbound packets dropped in INPUT so they leave no conntrack state.

A and B learn their public mappings through STUN and gossip them through S. Both initiate a
WireGuard handshake to the other's mapping as soon as the tunnel is configured (the lower key
2 s before the other), so the first initiation opens its sender's NAT and the second one gets
through: the handshakes are their own hole punch. Where they do not get through in time, A or
B asks S (the public member) to mediate a hole punch (the punch protocol itself is tested in
`tests/nat/`). The test ends when both have a direct tunnel to the other's public mapping,
nothing went through S, and they ping each other over mesh addresses. With A behind a
symmetric NAT (`masquerade random`) the punch fails and A and B relay through S instead.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from .natnet import CONE, NAT_LAB_MARKS, PUB, SYMMETRIC, NatLan, start_mesh

pytestmark = NAT_LAB_MARKS

@pytest.mark.timeout(90)
def test_two_cone_nats_punch_a_direct_tunnel(tmp_path: Path) -> None:
    with NatLan(tmp_path) as lan:
        s, a, b = start_mesh(lan, CONE)
        assert a.ping(b, count=2) and b.ping(a, count=2), lan.logs()
        ma, mb = a.member(b), b.member(a)
        assert ma is not None and mb is not None
        assert ma["path"] == "direct" and mb["path"] == "direct"
        # the tunnel goes to the NAT's public mapping, not through the seed
        assert ma["endpoint"].startswith("203.0.113.22:"), ma
        assert mb["endpoint"].startswith("203.0.113.21:"), mb
        ca, cb, cs = (x.status()["counters"] for x in (a, b, s))
        # Both ends initiate to the other's STUN mapping as soon as the tunnel is configured,
        # so the crossing handshakes usually open both NATs before a punch is due. A punch,
        # when one was asked for, went through the seed and succeeded; nothing was relayed.
        asked = ca.get("punch_requests_sent", 0) + cb.get("punch_requests_sent", 0)
        if asked:
            assert ca.get("punch_succeeded", 0) + cb.get("punch_succeeded", 0) >= 1, (ca, cb)
            assert cs.get("punch_forwarded", 0) >= 2, cs
        assert cs.get("relay_forwarded", 0) == 0, cs
        assert ca.get("relay_tx", 0) == 0 and cb.get("relay_tx", 0) == 0, (ca, cb)
        assert cs.get("punch_requests_sent", 0) == 0  # the public seed never needs to ask


@pytest.mark.timeout(90)
@pytest.mark.parametrize("masq_b", [SYMMETRIC, CONE],
                         ids=["symmetric-symmetric", "symmetric-cone"])
def test_symmetric_nat_relays_through_the_public_member(tmp_path: Path, masq_b: str) -> None:
    with NatLan(tmp_path) as lan:
        s, a, b = start_mesh(lan, SYMMETRIC, masq_b)
        assert a.ping(b, count=2) and b.ping(a, count=2), lan.logs()
        ma, mb = a.member(b), b.member(a)
        assert ma is not None and mb is not None
        assert ma["path"] == "relayed" and mb["path"] == "relayed", (ma, mb)
        assert ma["endpoint"] == f"{PUB}:51821" and mb["endpoint"] == f"{PUB}:51821"
        ca, cb, cs = (x.status()["counters"] for x in (a, b, s))
        assert ca.get("punch_failed", 0) + cb.get("punch_failed", 0) >= 1, (ca, cb)
        assert ca.get("relay_rtt_samples", 0) >= 1 and cb.get("relay_rtt_samples", 0) >= 1
        assert cs.get("relay_forwarded", 0) >= 4, cs  # handshake both ways + pings
        assert ca.get("relay_bad_mac", 0) == cb.get("relay_bad_mac", 0) == 0
        # `meshguard ping` names the relay hop and says why; a relayed path has no MTU
        res = a.cli("ping", b.mesh_v4, "-c", "1", "--interface", a.iface)
        assert res.returncode == 0, (res.stdout, [{k: v for k, v in x.status()["counters"].items()
                                                   if "probe" in k} for x in (a, s)])
        assert f"relayed via s at {PUB}:51821" in res.stdout and "rtt" in res.stdout
        assert "path MTU: relayed" in res.stdout
        # the probe timed the relay hop; the end-to-end RTT is the handshakes' (the hop's
        # RTT beside it in status)
        assert "ms to the relay" in res.stdout, res.stdout
        assert re.search(r"end-to-end RTT: [0-9.]+ ms \(WireGuard handshakes\)", res.stdout)
        for m in (ma, mb):
            assert m["rtt_source"] == "handshake" and m["rtt_ms"] is not None, m
            assert m["relay_rtt_ms"] is not None, m
        # why: both NAT types and the last punch's result
        assert "why: relayed via" in res.stdout and "NATs " in res.stdout, res.stdout
        # (while a retried punch is in flight the reason says "punching now": ask again)
        for _ in range(20):
            if "punching now" not in res.stdout:
                break
            time.sleep(0.5)
            res = a.cli("ping", b.mesh_v4, "-c", "1", "--interface", a.iface)
        assert "last punch failed" in res.stdout, res.stdout
        assert ma["mtu"] is None
