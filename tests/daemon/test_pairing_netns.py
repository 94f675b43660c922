"""Two nodes behind their own port-restricted cone NATs pair with `meshguard connect` and no
seed daemon, then mesh through the saved seeds (marked netns).

Topology (tests/daemon/natnet.py; every name carries a random suffix, all removed at the end):

    hub: bridge br0 (the "internet", 203.0.113.0/24)
      ├─ pub   203.0.113.10   coturn STUN :3478 only (no meshguard daemon anywhere public)
      ├─ natA  203.0.113.21   nftables cone NAT ── hostA 192.168.10.2 (node A)
      └─ natB  203.0.113.22   nftables cone NAT ── hostB 192.168.20.2 (node B)

A runs `connect --generate --in 0.15` (a punch 9 s later), B `connect --join` with A's token
and A gets B's reply token on stdin; both learn their mapping from the STUN server, probe the
other's mapping at the punch time and save it. Then `up` on both, with no --seed, joins through
the saved seeds: a direct tunnel between the two NAT mappings, and pings over mesh addresses.
B is then taken down and brought up again, and finds A through its saved seed once more.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from meshguard.identity import saved_seeds
from meshguard.identity.trust import TrustStore

from .natnet import NAT_LAB_MARKS, PUB, NatLan, pair

pytestmark = NAT_LAB_MARKS


@pytest.mark.timeout(90)
def test_connect_pairs_two_nated_nodes_without_a_seed(tmp_path: Path) -> None:
    with NatLan(tmp_path) as lan:
        s = lan.add_public("s", PUB)
        a = lan.add_behind_nat("a", "203.0.113.21", "192.168.10")
        b = lan.add_behind_nat("b", "203.0.113.22", "192.168.20")
        stun = lan.start_stun(s)
        p = pair(a, b, *stun)
        for out in (p.generated, p.joined):
            assert "public endpoint: 203.0.113.2" in out and "path proven" in out, out
        # each trusts the other and saved the other's NAT mapping, the port `up` uses
        assert list(TrustStore.load(a.cfg).peers.values()) == [b.identity]
        assert list(TrustStore.load(b.cfg).peers.values()) == [a.identity]
        assert saved_seeds.load(a.cfg) == [("203.0.113.22", 51821)]
        assert saved_seeds.load(b.cfg) == [("203.0.113.21", 51821)]

        a.up(None, *stun)  # no --seed: the saved one
        b.up(None, *stun)
        lan.wait(lambda: b.ping(a), "a ping from B to A over the mesh", 30)
        first_ping = time.monotonic()
        assert a.ping(b, count=2) and b.ping(a, count=2), lan.logs()
        ma, mb = a.member(b), b.member(a)
        assert ma is not None and mb is not None
        assert ma["path"] == "direct" and mb["path"] == "direct", (ma, mb)
        assert ma["endpoint"].startswith("203.0.113.22:"), ma
        assert mb["endpoint"].startswith("203.0.113.21:"), mb
        print(f"--join -> path proven {p.proven - p.join_started:.1f} s, both done "
              f"{p.punched - p.join_started:.1f} s, first ping {first_ping - p.join_started:.1f}"
              " s")

        # later: B's daemon restarts and finds A again through its saved seed alone
        assert b.cli("down", "--interface", b.iface).returncode == 0, lan.logs()
        assert b.proc is not None
        b.proc.wait(10)
        b.up(None, *stun)
        lan.wait(lambda: b.ping(a), "B's ping to A after B's restart", 30)
        assert b.member(a) is not None


@pytest.mark.timeout(60)
def test_connect_on_one_lan_needs_no_stun_and_pairs_over_the_lan(tmp_path: Path) -> None:
    # two hosts behind one NAT, no STUN server: the tokens carry local addresses only, and
    # the LAN address answers (no hairpin through the NAT)
    with NatLan(tmp_path) as lan:
        a = lan.add_behind_nat("a", "203.0.113.21", "192.168.10")
        c = lan.add_behind_existing_nat("c", "a", "192.168.10.3")
        p = pair(a, c, minutes=0.1)
        assert "no --stun server given" in p.generated and "path proven" in p.joined
        assert saved_seeds.load(a.cfg) == [("192.168.10.3", 51821)]
        assert saved_seeds.load(c.cfg) == [("192.168.10.2", 51821)]
        a.up(None)
        c.up(None)
        lan.wait(lambda: c.ping(a), "a ping from C to A over the mesh", 30)
        mc = c.member(a)
        assert mc is not None and mc["endpoint"] == "192.168.10.2:51821", mc
