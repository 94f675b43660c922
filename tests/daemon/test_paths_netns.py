"""Path selection with real daemons behind nftables NATs (marked netns): a relayed pair goes
direct once a NAT allows it, a dead direct path falls back to the relay, and two members
behind one NAT talk over their LAN (docs/nat-testbed.md#path-selection).

Topology: natnet.py's lab (a public seed S with STUN, A and B behind their own NAT routers,
or C on A's LAN behind A's NAT). Each test prints the time of its transition.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .meshnet import Node, trust_all
from .natnet import CONE, NAT_LAB_MARKS, PUB, SYMMETRIC, NatLan, Pinger, start_mesh

pytestmark = NAT_LAB_MARKS


def _paths(a: Node, b: Node) -> tuple[str | None, str | None]:
    """Each end's path to the other (None without a tunnel that has had a handshake)."""
    ma, mb = a.member(b), b.member(a)
    return tuple(m["path"] if m and m["tunnel"] and m["last_handshake"] else None
                 for m in (ma, mb))  # type: ignore[return-value]


def _wait_paths(lan: NatLan, a: Node, b: Node, path: str, timeout: float) -> float:
    """Poll both ends' status until both say `path`; returns when (monotonic)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if _paths(a, b) == (path, path):
            return time.monotonic()
        time.sleep(0.2)
    ma, mb = a.member(b), b.member(a)
    raise AssertionError(f"not {path} after {timeout} s:\n{ma}\n{mb}\n{lan.logs()}")


@pytest.mark.timeout(120)
def test_relayed_pair_goes_direct_after_a_nat_change(tmp_path: Path) -> None:
    with NatLan(tmp_path) as lan:
        _s, a, b = start_mesh(lan, SYMMETRIC, CONE)
        _wait_paths(lan, a, b, "relayed", 20)
        ma = a.member(b)
        assert ma is not None and ma["why"].startswith("relayed via"), ma
        # (one STUN server tells a cone NAT from none, not from a symmetric one: B's is
        # "unknown"; A's is symmetric since the relay saw another port than STUN did)
        assert ma["own_nat"] == "symmetric", ma
        print(f"\nA's why before: {ma['why']}")
        with Pinger(a, b, tmp_path / "ping.log") as ping:
            t0 = time.monotonic()
            changed = time.time()
            lan.set_nat("a", CONE)  # the router's NAT is now port-preserving
            # set_nat flushes the router's conntrack, which also cuts A's relay registration
            # and gossip: the pair may be declared dead and rejoin before it punches, which on
            # a loaded 2-core machine has taken up to ~30 s (usually 4-14 s)
            switched = _wait_paths(lan, a, b, "direct", 45)
            at = time.time()
            time.sleep(3)
        assert a.log is not None and b.log is not None
        took = switched - t0
        print(f"\nrelayed -> direct {took:.1f} s after the NAT change")
        assert took < 30
        # The NAT change flushed the router's mappings, the relay's path to A and gossip
        # among them, so pings are lost (and the membership may even drop and re-add the
        # pair) until A's next relay registration tells the relay and the members A's new
        # address; test_relayed_pair_goes_direct_without_a_lost_ping shows the switch alone.
        # Once both ends are direct, nothing is lost.
        lost_all, lost = ping.lost(since=changed), ping.lost(since=at)
        print(f"pings: {ping.sent} sent, {len(ping.replies)} answered, {len(lost_all)} lost "
              f"after the change, {len(lost)} after both ends were direct")
        assert not lost, lost
        ma, mb = a.member(b), b.member(a)
        assert ma is not None and mb is not None
        assert ma["endpoint"].startswith("203.0.113.22:"), ma
        assert mb["endpoint"].startswith("203.0.113.21:"), mb
        ca, cb = a.status()["counters"], b.status()["counters"]
        # a punch moved the pair, or (when the flush made the membership drop and re-add
        # it) the new tunnel's first handshake went straight to A's new mapping (a second
        # "first direct" after the one at start-up)
        for m, c in ((ma, ca), (mb, cb)):
            assert (c.get("path_relay_to_direct", 0) >= 1
                    or c.get("path_first_direct", 0) >= 2), (m, c)
        print(f"A's why after: {ma['why']}")
        assert ca.get("relay_bad_mac", 0) == cb.get("relay_bad_mac", 0) == 0


@pytest.mark.timeout(120)
def test_cut_direct_path_falls_back_to_the_relay(tmp_path: Path) -> None:
    with NatLan(tmp_path) as lan:
        s, a, b = start_mesh(lan, CONE)
        _wait_paths(lan, a, b, "direct", 10)
        with Pinger(a, b, tmp_path / "ping.log") as ping:
            time.sleep(1)
            t0 = time.monotonic()
            cut_at = time.time()
            lan.cut("a", "203.0.113.22")  # A's router drops everything to and from B's
            switched = _wait_paths(lan, a, b, "relayed", 15)
            time.sleep(3)
        took = switched - t0
        print(f"\ndirect -> relay {took:.1f} s after the cut")
        assert took < 10
        # answers to pings sent after the cut (a reply in flight at the cut says nothing)
        after = [t for q, t in ping.replies.items() if ping.sent_at(q) > cut_at]
        print(f"pings: {ping.sent} sent, {len(ping.replies)} answered, first answer after "
              f"the cut {min(after) - cut_at:.1f} s" if after else "no answer after the cut")
        assert after and min(after) - cut_at < 10
        assert not ping.lost(since=min(after)), ping.lost(since=min(after))
        assert a.ping(b, count=2) and b.ping(a, count=2), lan.logs()
        ma, mb = a.member(b), b.member(a)
        assert ma is not None and mb is not None
        assert ma["endpoint"] == f"{PUB}:51821" and mb["endpoint"] == f"{PUB}:51821"
        ca, cs = a.status()["counters"], s.status()["counters"]
        assert ca.get("path_direct_dead", 0) >= 1, ca
        assert cs.get("relay_forwarded", 0) >= 4, cs


@pytest.mark.timeout(90)
def test_two_members_behind_one_nat_talk_over_their_lan(tmp_path: Path) -> None:
    with NatLan(tmp_path) as lan:
        s = lan.add_public("s", PUB)
        a = lan.add_behind_nat("a", "203.0.113.21", "192.168.10", CONE)
        c = lan.add_behind_existing_nat("c", "a", "192.168.10.3")
        trust_all([s, a, c])
        stun = lan.start_stun(s)
        s.up(None, *stun)
        t0 = time.monotonic()
        a.up([s], *stun)
        c.up([s], *stun)

        def lan_direct() -> bool:
            ma, mc = a.member(c), c.member(a)
            return bool(ma and mc and ma["last_handshake"] and mc["last_handshake"]
                        and (ma["endpoint"] or "").startswith("192.168.10.3:")
                        and (mc["endpoint"] or "").startswith("192.168.10.2:"))

        lan.wait(lan_direct, "a LAN tunnel between A and C", 40)
        print(f"\nA and C direct over their LAN {time.monotonic() - t0:.1f} s after A started")
        assert a.ping(c, count=3) and c.ping(a, count=3), lan.logs()
        ma, mc = a.member(c), c.member(a)
        assert ma is not None and mc is not None
        assert ma["path"] == "direct" and mc["path"] == "direct", (ma, mc)
        assert lan_direct(), (ma, mc)
        cs = s.status()["counters"]
        assert cs.get("relay_forwarded", 0) == 0, cs
        # the first handshake went to the LAN address: no punch (and no hairpin) was needed
        ca, cc = a.status()["counters"], c.status()["counters"]
        assert ca.get("punch_requests_sent", 0) == cc.get("punch_requests_sent", 0) == 0


@pytest.mark.timeout(120)
def test_relayed_pair_goes_direct_without_a_lost_ping(tmp_path: Path) -> None:
    with NatLan(tmp_path) as lan:
        # two cone NATs whose direct path is cut from the start: the pair is relayed
        s = lan.add_public("s", PUB)
        a = lan.add_behind_nat("a", "203.0.113.21", "192.168.10", CONE)
        b = lan.add_behind_nat("b", "203.0.113.22", "192.168.20", CONE)
        lan.cut("a", "203.0.113.22")
        trust_all([s, a, b])
        stun = lan.start_stun(s)
        s.up(None, *stun)
        a.up([s], *stun)
        b.up([s], *stun)
        _wait_paths(lan, a, b, "relayed", 40)
        assert a.ping(b, count=2), lan.logs()
        with Pinger(a, b, tmp_path / "ping.log") as ping:
            time.sleep(1)
            t0 = time.monotonic()
            lan.uncut("a")  # the direct path works now; the next re-punch finds it
            switched = _wait_paths(lan, a, b, "direct", 30)
            time.sleep(3)
        took = switched - t0
        print(f"\nrelayed -> direct {took:.1f} s after the direct path opened; pings: "
              f"{ping.sent} sent, {len(ping.replies)} answered")
        assert took < 30
        assert ping.sent > 20 and not ping.lost(), ping.lost()  # none lost at the switch
        ma = a.member(b)
        assert ma is not None and ma["endpoint"].startswith("203.0.113.22:"), ma
        ca, cb = a.status()["counters"], b.status()["counters"]
        assert ca.get("path_relay_to_direct", 0) + cb.get("path_relay_to_direct", 0) >= 1
