"""mesh/routes.py: a prefix is used only when offered, granted, asked for and safe; overlaps are
resolved alike on every node (docs/policy.md#routes)."""

from __future__ import annotations

import base64
import ipaddress

from meshguard.crypto.keys import Ed25519PrivateKey
from meshguard.mesh.actions import MemberView, PeerUp
from meshguard.mesh.node import MeshNode
from meshguard.mesh.routes import RouteMember, RouteOptions, RoutePlanner
from meshguard.policy.compiler import route_grants
from meshguard.policy.org_policy import parse_org_policy
from meshguard.policy.signed import sign_policy
from meshguard.policy.table import MemberInfo, RouteGrant

from .helpers import FakeBackend, FakeMembership, FakeTrust

NET = ipaddress.ip_network
ME = b"\x05" * 32
A = b"\x10" * 32
B = b"\x20" * 32
LAN = NET("10.20.0.0/24")
EXIT = (NET("0.0.0.0/0"), NET("::/0"))


def grant(member: bytes, prefix: str) -> RouteGrant:
    return RouteGrant(member, NET(prefix), "org test (serial 1) line 1")


def member(key: bytes, *offered: str, name: str | None = None,
           underlay: tuple[str, ...] = ("192.0.2.1",)) -> RouteMember:
    return RouteMember(key, name, tuple(NET(o) for o in offered), underlay)


def test_a_subnet_needs_offer_grant_and_accept_routes() -> None:
    p = RoutePlanner(RouteOptions(accept_routes=True))
    a = member(A, "10.20.0.0/24")
    assert p.plan(ME, [a]).allowed == {}  # offered, not granted
    assert len(p.warnings) == 1 and "10.20.0.0/24" in p.warnings[0]
    p.plan(ME, [a])
    assert len(p.warnings) == 1  # one warning per (member, prefix)
    assert p.set_grants([grant(A, "10.20.0.0/16")])
    plan = p.plan(ME, [a])
    assert plan.allowed == {A: (LAN,)} and plan.subnets == ((LAN, A),)
    assert p.plan(ME, [member(A)]).allowed == {}  # granted, no longer offered
    off = RoutePlanner(RouteOptions(accept_routes=False), grants=(grant(A, "10.20.0.0/24"),))
    assert off.plan(ME, [a]).allowed == {} and off.plan(ME, [a]).subnets == ()


def test_a_withdrawn_grant_removes_the_prefix() -> None:
    p = RoutePlanner(RouteOptions(accept_routes=True))
    p.set_grants([grant(A, "10.20.0.0/24")])
    assert p.plan(ME, [member(A, "10.20.0.0/24")]).subnets
    assert p.set_grants([])
    assert not p.set_grants([])
    plan = p.plan(ME, [member(A, "10.20.0.0/24")])
    assert plan.allowed == {} and plan.subnets == ()


def test_a_grant_for_another_member_does_not_count() -> None:
    p = RoutePlanner(RouteOptions(accept_routes=True), grants=(grant(B, "10.20.0.0/24"),))
    assert p.plan(ME, [member(A, "10.20.0.0/24")]).allowed == {}


def test_the_same_prefix_goes_to_the_lowest_identity_and_nested_ones_both_stay() -> None:
    p = RoutePlanner(RouteOptions(accept_routes=True))
    p.set_grants([grant(A, "10.20.0.0/16"), grant(B, "10.20.0.0/16")])
    b = member(B, "10.20.0.0/24", "10.20.5.0/24")
    a = member(A, "10.20.0.0/24")
    for order in ([a, b], [b, a]):
        plan = p.plan(ME, order)
        assert plan.allowed == {A: (LAN,), B: (NET("10.20.5.0/24"),)}


def test_never_over_the_mesh_prefixes_or_underlay_addresses() -> None:
    p = RoutePlanner(RouteOptions(accept_routes=True), local_underlay=("172.16.3.4",))
    p.set_grants([grant(A, "10.0.0.0/8"), grant(A, "fd99:6d67::/48"), grant(A, "172.16.0.0/12"),
                  grant(A, "192.0.2.0/24"), grant(A, "10.99.5.0/24")])
    a = member(A, "10.0.0.0/8", "10.99.5.0/24", "172.16.0.0/12", "192.0.2.0/24",
               "fd99:6d67::/48")
    assert p.plan(ME, [a]).allowed == {}
    assert len(p.warnings) == 5
    assert any("mesh prefixes" in w for w in p.warnings)
    assert any("underlay" in w for w in p.warnings)


def test_exit_node_by_name_or_key_only_when_granted() -> None:
    exit_a = member(A, "0.0.0.0/0", "::/0", name="exit-1", underlay=("192.0.2.1",))
    b = member(B, "0.0.0.0/0", "::/0", name="other", underlay=("192.0.2.2",))
    p = RoutePlanner(RouteOptions(exit_node="exit-1"))
    plan = p.plan(ME, [exit_a, b])
    assert plan.exit_via is None and plan.exit_problem and "grants" in plan.exit_problem
    p.set_grants([grant(A, "0.0.0.0/0"), grant(A, "::/0"), grant(B, "0.0.0.0/0")])
    plan = p.plan(ME, [exit_a, b])
    assert plan.exit_via == A and plan.allowed == {A: EXIT}
    assert {str(n) for n in plan.bypass} == {"192.0.2.1/32", "192.0.2.2/32"}
    by_key = RoutePlanner(RouteOptions(exit_node=base64.b64encode(B).decode()),
                          grants=p.grants)
    assert by_key.plan(ME, [exit_a, b]).allowed == {B: (EXIT[0],)}  # ::/0 not granted to B
    nobody = RoutePlanner(RouteOptions(exit_node="nope"), grants=p.grants)
    assert "not a member" in str(nobody.plan(ME, [exit_a, b]).exit_problem)
    # an exit offered and granted but not asked for is not used
    assert RoutePlanner(grants=p.grants).plan(ME, [exit_a]).allowed == {}


def test_what_this_node_carries() -> None:
    opts = RouteOptions(advertise=(LAN, *EXIT))
    p = RoutePlanner(opts)
    plan = p.plan(ME, [])
    assert plan.carried == () and not plan.exit_served
    p.set_grants([grant(ME, "10.20.0.0/16"), grant(ME, "0.0.0.0/0")])
    plan = p.plan(ME, [])
    assert plan.carried == (LAN,) and plan.exit_served


def test_the_node_gives_a_granted_carrier_its_prefix_and_takes_it_back() -> None:
    """MeshNode.reconcile puts the plan into the peers' allowed IPs (userspace and kernel mode
    take them from the same PeerUp), and a withdrawn grant takes them out in the same call."""
    ms, tr, be = FakeMembership(), FakeTrust(), FakeBackend()
    planner = RoutePlanner(RouteOptions(accept_routes=True))
    node = MeshNode(ME, b"\x06" * 32, ms, tr, backend=be, routes=planner)
    carrier = MemberView(A, b"\x11" * 32, ("192.0.2.1", 51821), ("192.0.2.1", 51821), None,
                         "alive", 1, routes=(LAN,))
    ms.view[A] = carrier
    tr.keys.add(A)
    node.reconcile(1.7e9)
    assert LAN not in be.peers[carrier.wg_key].allowed_ips
    planner.set_grants([grant(A, "10.20.0.0/24")])
    out = node.reconcile(1.7e9)
    assert [a for a in out if isinstance(a, PeerUp)]
    assert LAN in be.peers[carrier.wg_key].allowed_ips
    assert node.route_plan.subnets == ((LAN, A),)
    planner.set_grants([])
    out = node.reconcile(1.7e9)
    assert [a for a in out if isinstance(a, PeerUp)]
    assert LAN not in be.peers[carrier.wg_key].allowed_ips and node.route_plan.subnets == ()


def test_grants_compiled_from_an_org_signed_policy_drive_the_plan() -> None:
    """The grants as the policy compiler makes them from a signed policy's text; a new serial
    without the exit line withdraws the exit and keeps the subnet."""
    org = Ed25519PrivateKey(b"\x77" * 32)
    gw, ex = MemberInfo(A, b"\x11" * 32, "gw-1"), MemberInfo(B, b"\x21" * 32, "exit-1")

    def grants(text: str, serial: int) -> tuple[RouteGrant, ...]:
        sp = sign_policy(org, text, serial, 1_700_000_000)
        return route_grants([(sp, parse_org_policy(text, "fleet.policy"))], [gw, ex])

    keys = f"group gws {base64.b64encode(A).decode()}\ngroup exits {base64.b64encode(B).decode()}\n"
    members = [member(A, "10.20.0.0/24", "10.30.0.0/24"), member(B, "0.0.0.0/0", "::/0")]
    p = RoutePlanner(RouteOptions(accept_routes=True, exit_node=base64.b64encode(B).decode()))
    p.set_grants(grants(keys + "route 10.20.0.0/16 via gws\nexit via exits\n", 7))
    plan = p.plan(ME, members)
    assert plan.allowed == {A: (LAN,), B: EXIT} and plan.exit_via == B
    assert any("10.30.0.0/24" in w for w in p.warnings)  # offered, not granted
    p.set_grants(grants(keys + "route 10.20.0.0/16 via gws\n", 8))
    plan = p.plan(ME, members)
    assert plan.allowed == {A: (LAN,)} and plan.exit_via is None and plan.exit_problem
