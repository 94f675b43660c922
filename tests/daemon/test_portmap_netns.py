"""Two real daemons, each behind a symmetric NAT whose router runs miniupnpd, go direct through
the port mappings their routers grant (marked netns).

Topology (every name carries a random suffix; everything is removed at the end):

    hub: bridge br0 (the "internet", 11.0.113.0/24: miniupnpd maps nothing on a reserved WAN)
      ├─ pub   11.0.113.10   seed S (public) + coturn STUN :3478
      ├─ natA  11.0.113.21   nftables `masquerade random` + miniupnpd ── hostA 192.168.10.2 (A)
      └─ natB  11.0.113.22   nftables `masquerade random` + miniupnpd ── hostB 192.168.20.2 (B)

Without the mappings this pair relays through S (test_nat_punch_netns.py,
test_symmetric_nat_relays_through_the_public_member). A asks its router by PCP, B (pinned to
UPnP-IGD with the hidden --portmap-methods) by UPnP; each advertises its mapping first, as a
PUBLIC endpoint, so the other's handshake goes straight to it. Then `down` on A deletes A's
mapping on its router.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from .meshnet import trust_all
from .natnet import NAT_LAB_MARKS, ROUTABLE, SYMMETRIC, NatLan

pytestmark = [
    *NAT_LAB_MARKS,
    pytest.mark.skipif(shutil.which("miniupnpd") is None and
                       not Path("/usr/sbin/miniupnpd").exists(),
                       reason="needs miniupnpd (miniupnpd-nftables)"),
]

A_WAN, B_WAN = f"{ROUTABLE}21", f"{ROUTABLE}22"


@pytest.mark.timeout(90)
def test_symmetric_nats_go_direct_through_router_port_mappings(tmp_path: Path) -> None:
    with NatLan(tmp_path) as lan:
        s = lan.add_public("s", f"{ROUTABLE}10")
        a = lan.add_behind_nat("a", A_WAN, "192.168.10", SYMMETRIC)
        b = lan.add_behind_nat("b", B_WAN, "192.168.20", SYMMETRIC)
        lan.start_miniupnpd("a")
        lan.start_miniupnpd("b")
        trust_all([s, a, b])
        stun = lan.start_stun(s)
        s.up(None, *stun)
        t0 = time.monotonic()
        a.up([s], *stun)
        b.up([s], *stun, "--portmap-methods", "upnp")

        def direct() -> bool:
            # Each NAT still maps A's and B's own outgoing packets to random ports: the side
            # whose handshake went first reaches the other's mapped port, the other side
            # answers the source it saw (a port of the same router). Either way both are on
            # the routers' public addresses, never the seed's.
            ma, mb = a.member(b), b.member(a)
            if not (ma and mb and ma["last_handshake"] and mb["last_handshake"]):
                return False
            ea, eb = ma["endpoint"], mb["endpoint"]
            return bool(ma["path"] == mb["path"] == "direct"
                        and ea.startswith(f"{B_WAN}:") and eb.startswith(f"{A_WAN}:")
                        and (ea == f"{B_WAN}:51821" or eb == f"{A_WAN}:51821"))

        lan.wait(lambda: a.status()["portmap"] and b.status()["portmap"],
                 "both port mappings", 20)
        t_mapped = time.monotonic() - t0
        lan.wait(direct, "a direct handshake between A and B", 40)
        t_direct = time.monotonic() - t0
        # a tunnel that just moved to the mapping may need a new handshake first
        lan.wait(lambda: a.ping(b) and b.ping(a), "pings both ways", 15)
        t_ping = time.monotonic() - t0
        pa, pb = a.status()["portmap"], b.status()["portmap"]
        assert pa is not None and pa["protocol"] == "pcp", (pa, lan.logs())
        assert pb is not None and pb["protocol"] == "upnp", (pb, lan.logs())
        assert pa["external"] == f"{A_WAN}:51821" and pb["external"] == f"{B_WAN}:51821"
        assert 3000 < pa["expires_in"] <= 7200
        assert lan.port_mappings("a") == ["udp 51821 -> 192.168.10.2:51821"]
        assert lan.port_mappings("b") == ["udp 51821 -> 192.168.20.2:51821"]
        assert direct(), (a.member(b), b.member(a))
        ca, cb, cs = (x.status()["counters"] for x in (a, b, s))
        assert cs.get("relay_forwarded", 0) == 0, cs
        assert ca.get("relay_tx", 0) == 0 and cb.get("relay_tx", 0) == 0, (ca, cb)
        # a punch may be asked for before a mapping is in the record (B's takes ~2 s of UPnP
        # discovery), but two symmetric NATs cannot be punched: the mapping made the path
        assert ca.get("punch_succeeded", 0) == cb.get("punch_succeeded", 0) == 0, (ca, cb)
        assert ca.get("portmap_granted") == 1 and cb.get("portmap_granted") == 1

        t1 = time.monotonic()
        res = a.cli("down", "--interface", a.iface)
        assert res.returncode == 0, res.stderr
        assert a.proc is not None
        a.proc.wait(15)
        t_down = time.monotonic() - t1
        assert lan.port_mappings("a") == [], lan.logs()
        assert lan.port_mappings("b") == ["udp 51821 -> 192.168.20.2:51821"]
        print(f"\nstart -> both mapped {t_mapped:.2f} s, direct {t_direct:.2f} s, "
              f"pings {t_ping:.2f} s; "
              f"down (mapping removed) {t_down:.2f} s")


@pytest.mark.timeout(90)
def test_a_router_that_refuses_is_a_warning_and_the_pair_relays(tmp_path: Path) -> None:
    """A's router refuses every mapping. Pinned to UPnP: miniupnpd answers a refused PCP or
    NAT-PMP request only after trying (and logging) every other port, which takes it about
    a minute, while UPnP's AddPortMapping says no at once (error 606)."""
    with NatLan(tmp_path) as lan:
        s = lan.add_public("s", f"{ROUTABLE}10")
        a = lan.add_behind_nat("a", A_WAN, "192.168.10", SYMMETRIC)
        b = lan.add_behind_nat("b", B_WAN, "192.168.20", SYMMETRIC)
        lan.start_miniupnpd("a", allow=False)
        trust_all([s, a, b])
        stun = lan.start_stun(s)
        s.up(None, *stun)
        a.up([s], *stun, "--portmap-methods", "upnp")
        b.up([s], *stun)
        lan.wait(lambda: a.status()["counters"].get("portmap_refused", 0) == 1,
                 "A's router to refuse the UPnP mapping", 20)
        assert a.status()["portmap"] is None and lan.port_mappings("a") == []
        assert a.log is not None
        text = a.log.read_text()
        assert "WARNING meshguard.daemon: port mapping: the router refused upnp" in text
        assert "WARNING meshguard.daemon: port mapping: the router offers no mapping" in text
        lan.wait(lambda: (a.member(b) or {}).get("path") == "relayed" and a.ping(b),
                 "A and B relayed through S", 40)


@pytest.mark.timeout(90)
def test_a_node_that_moves_to_another_router_gets_a_new_mapping(tmp_path: Path) -> None:
    """B, mapped by its router, plugs into a second router (C, also with miniupnpd) and moves
    its default route there; its old link stays up. B asks C for a new mapping, deletes the
    one at its old router (still reachable from its old address), and A, behind its own
    symmetric NAT, follows B to the new mapping directly (daemon/portmap_rehome.py)."""
    c_wan = f"{ROUTABLE}23"
    with NatLan(tmp_path) as lan:
        s = lan.add_public("s", f"{ROUTABLE}10")
        a = lan.add_behind_nat("a", A_WAN, "192.168.10", SYMMETRIC)
        b = lan.add_behind_nat("b", B_WAN, "192.168.20", SYMMETRIC)
        lan.add_router("c", c_wan, "192.168.30", SYMMETRIC)
        for r in "abc":
            lan.start_miniupnpd(r)
        trust_all([s, a, b])
        stun = lan.start_stun(s)
        s.up(None, *stun)
        a.up([s], *stun)
        b.up([s], *stun, announce=False)

        def direct_to(wan: str) -> bool:
            ma, mb = a.member(b), b.member(a)
            return bool(ma and mb and ma["last_handshake"] and ma["path"] == "direct"
                        and str(ma["endpoint"]).startswith(f"{wan}:"))

        lan.wait(lambda: direct_to(B_WAN), "a direct tunnel to B's mapping", 40)
        lan.wait(lambda: a.ping(b), "pings before the move", 15)
        assert lan.port_mappings("b") == ["udp 51821 -> 192.168.20.2:51821"]

        new_if = lan.plug(b, "c", "192.168.30.2")
        t0 = time.monotonic()
        b.ns.run(["ip", "route", "replace", "default", "via", "192.168.30.1", "dev", new_if])

        def remapped() -> bool:
            pm = b.status()["portmap"]
            return bool(pm and pm["external"] == f"{c_wan}:51821")

        lan.wait(remapped, "B's mapping at the new router", 10)
        t_mapped = time.monotonic() - t0
        lan.wait(lambda: lan.port_mappings("b") == [], "the old mapping deleted", 10)
        t_deleted = time.monotonic() - t0
        lan.wait(lambda: direct_to(c_wan), "A direct to B's new mapping", 15)
        lan.wait(lambda: a.ns.ping(b.mesh_v4, wait=0.5), "pings to B", 10)
        t_ping = time.monotonic() - t0
        assert lan.port_mappings("c") == ["udp 51821 -> 192.168.30.2:51821"], lan.logs()
        cb = b.status()["counters"]
        assert cb.get("underlay_changes") == 1 and cb.get("relay_tx", 0) == 0, cb
        assert b.log is not None and "the underlay moved" in b.log.read_text(), lan.logs()
        print(f"\nmove to another router: new mapping {t_mapped:.2f} s, old one deleted "
              f"{t_deleted:.2f} s, A direct to it and pings {t_ping:.2f} s")
