"""The compiled table: the order peer -> org -> global -> org-signed -> default, groups of an
org (a certificate name counts only on that org's certificate), route grants, counters and
deduplicated chains. Members are admitted by real trust stores in temporary config dirs."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshguard.crypto.keys import Ed25519PrivateKey, b64encode
from meshguard.identity.addressing import org_domain
from meshguard.policy.compiler import compile_table, route_grants
from meshguard.policy.org_policy import OrgPolicy, parse_org_policy
from meshguard.policy.service_files import load_services
from meshguard.policy.signed import SignedPolicy, sign_policy
from meshguard.policy.table import PROTO_TCP, PROTO_UDP, MemberInfo, PolicyTable
from meshguard.policy.verdict import chain_of, decide, verdict

from .helpers import Node, member, new_key, node, trust_store, write

InForce = list[tuple[SignedPolicy, OrgPolicy]]


def signed(org: Ed25519PrivateKey, text: str, serial: int = 7) -> tuple[SignedPolicy, OrgPolicy]:
    sp = sign_policy(org, text, serial, 0)
    return sp, parse_org_policy(sp.text, "p")


def source_of(table: PolicyTable, peer: MemberInfo, port: int, proto: int = PROTO_TCP) -> str:
    allowed, counter = decide(chain_of(table, peer.wg_public), proto, port)
    info = table.rules[counter]
    return f"{'allow' if allowed else 'deny'} {info.source}:{info.line}"


class Mesh:
    def __init__(self, tmp_path: Path) -> None:
        self.cfg = tmp_path
        self.acme = new_key()
        self.other = new_key()
        self.me = node(self.acme, "val-1")
        self.db = node(self.acme, "db-1-cert")  # also an authorized key, named db-1
        self.mon = node(self.acme, "mon-1")
        self.impostor = node(self.other, "mon-1")  # same name, another org's certificate
        self.keyed = node(self.other, "anything")  # listed in a group by key
        self.plain = node(self.acme, "web-1")
        while "/" in b64encode(self.plain.key):  # its key names a file below
            self.plain = node(self.acme, "web-1")
        self.trust = trust_store(tmp_path, peers={"db-1": self.db.key},
                                 orgs={"acme": self.acme.public_key.raw,
                                       "other": self.other.public_key.raw})
        self.org_names = {self.acme.public_key.raw: "acme", self.other.public_key.raw: "other"}

    def m(self, n: Node) -> MemberInfo:
        return member(self.trust, n)

    @property
    def members(self) -> list[MemberInfo]:
        return [self.m(n) for n in (self.me, self.db, self.mon, self.impostor, self.keyed,
                                    self.plain)]

    def table(self, in_force: InForce, me: Node | None = None) -> PolicyTable:
        local = load_services(self.cfg, self.trust)
        return compile_table(local, in_force, self.m(me or self.me), self.members,
                             self.org_names)


def test_the_order_is_peer_org_global_signed_default(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    s = tmp_path / "services"
    write(s / "peer" / "db-1.policy", "allow tcp 1\n")
    write(s / "org" / "acme.policy", "deny tcp 1\nallow tcp 2\n")
    write(s / "global.policy", "deny tcp 2\nallow tcp 3\n")
    pair = signed(mesh.acme, "default deny\ndeny tcp 3\nallow tcp 4\n")
    table = mesh.table([pair])
    db, web, keyed = mesh.m(mesh.db), mesh.m(mesh.plain), mesh.m(mesh.keyed)
    assert [source_of(table, db, p) for p in (1, 2, 3, 4, 5)] == [
        "allow services/peer/db-1.policy:1",
        "allow services/org/acme.policy:2",
        "allow services/global.policy:2",
        "allow org acme (serial 7):3",
        "deny org acme (serial 7):1",
    ]
    assert [source_of(table, web, p) for p in (1, 2, 3, 4, 5)] == [
        "deny services/org/acme.policy:1",
        "allow services/org/acme.policy:2",
        "allow services/global.policy:2",
        "allow org acme (serial 7):3",
        "deny org acme (serial 7):1",
    ]
    # not an acme member: no org file; the global file, then the signed policy
    assert [source_of(table, keyed, p) for p in (1, 2, 3)] == [
        "deny org acme (serial 7):1", "deny services/global.policy:1",
        "allow services/global.policy:2"]
    # services/default, when it exists, decides before an org's default
    write(s / "default", "allow\n")
    assert source_of(mesh.table([pair]), db, 5) == "allow services/default:1"


def test_a_peer_file_by_certificate_name_and_by_key(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    s = tmp_path / "services"
    write(s / "default", "deny")
    write(s / "peer" / f"{b64encode(mesh.plain.key)}.policy", "allow tcp 80\n")
    assert verdict(mesh.table([]), mesh.plain.wg_public, PROTO_TCP, 80)
    write(s / "peer" / "web-1.policy", "allow tcp 81\n")
    assert verdict(mesh.table([]), mesh.plain.wg_public, PROTO_TCP, 81)
    # a bare certificate name is any trusted org's certificate of that name ...
    write(s / "peer" / "mon-1.policy", "allow tcp 9100\n")
    table = mesh.table([])
    assert verdict(table, mesh.mon.wg_public, PROTO_TCP, 9100)
    assert verdict(table, mesh.impostor.wg_public, PROTO_TCP, 9100)
    assert not verdict(table, mesh.db.wg_public, PROTO_TCP, 9100)
    # ... NAME.DOMAIN is only the certificate the org of that domain issued
    (s / "peer" / "mon-1.policy").unlink()
    domain = org_domain(mesh.acme.public_key.raw)
    write(s / "peer" / f"mon-1.{domain}.policy", "allow tcp 9100\n")
    table = mesh.table([])
    assert verdict(table, mesh.mon.wg_public, PROTO_TCP, 9100)
    assert not verdict(table, mesh.impostor.wg_public, PROTO_TCP, 9100)


POLICY = """
group validators val-1
group monitoring mon-1 {keyed}
to validators
allow tcp 9100 from monitoring
deny tcp 9100
to *
allow udp 53
"""


def test_groups_by_certificate_name_count_only_this_orgs_certificates(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    pair = signed(mesh.acme, POLICY.format(keyed=b64encode(mesh.keyed.key)))
    table = mesh.table([pair])
    allowed = {n: verdict(table, getattr(mesh, n).wg_public, PROTO_TCP, 9100)
               for n in ("mon", "keyed", "impostor", "db", "plain")}
    assert allowed == {"mon": True, "keyed": True, "impostor": False, "db": False,
                       "plain": False}
    # the reverse direction: at a monitoring node, `to validators` does not apply
    at_mon = mesh.table([pair], me=mesh.mon)
    assert verdict(at_mon, mesh.me.wg_public, PROTO_TCP, 9100)  # the default: allow
    assert source_of(at_mon, mesh.m(mesh.me), 9100) == "allow default:0"
    assert verdict(at_mon, mesh.me.wg_public, PROTO_UDP, 53)


def test_a_policy_of_another_org_cannot_claim_this_orgs_names(tmp_path: Path) -> None:
    """`other` signs a group holding the name val-1: acme's val-1 is not in it."""
    mesh = Mesh(tmp_path)
    pair = signed(mesh.other, "group victims val-1\nto victims\ndeny all\n")
    at_mon = mesh.table([pair], me=mesh.mon)
    assert verdict(at_mon, mesh.me.wg_public, PROTO_TCP, 22)
    # and at acme's val-1 itself, `to victims` does not apply
    assert verdict(mesh.table([pair]), mesh.mon.wg_public, PROTO_TCP, 22)


def test_chains_are_shared_and_counters_are_one_per_rule(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    write(tmp_path / "services" / "global.policy", "allow tcp 22\ndeny all\n")
    many = [MemberInfo(new_key().public_key.raw, bytes([i]) * 32) for i in range(50)]
    local = load_services(tmp_path, mesh.trust)
    table = compile_table(local, [], mesh.m(mesh.me), many)
    assert table.active and len(table.by_peer) == 50 and len(table.chains) == 1
    assert [(r.source, r.line, r.text) for r in table.rules] == [
        ("default", 0, "allow all"),
        ("services/global.policy", 1, "allow tcp 22"),
        ("services/global.policy", 2, "deny all")]
    # an unknown WireGuard key gets the fallback chain: the global rules
    assert not verdict(table, b"\x99" * 32, PROTO_TCP, 80)
    assert verdict(table, b"\x99" * 32, PROTO_TCP, 22)


def test_nothing_configured_means_an_inactive_table(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    assert not mesh.table([]).active
    write(tmp_path / "services" / "default", "allow\n")
    assert not mesh.table([]).active  # allow everything: nothing to enforce
    pair = signed(mesh.acme, "group g mon-1\n")
    assert not mesh.table([pair]).active
    write(tmp_path / "services" / "default", "deny\n")
    assert mesh.table([]).active


def test_route_and_exit_grants(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    gw = node(mesh.acme, "gw-1")
    fake_gw = node(mesh.other, "gw-1")
    exit_node = node(mesh.other, "exit-a")
    text = (f"group exits {b64encode(exit_node.key)}\n"
            "route 10.20.0.0/24 via gw-1\n"
            "route fd00:1::/64 via monitoring\n"
            "group monitoring mon-1\n"
            "exit via exits\n")
    sp, op = signed(mesh.acme, text, serial=9)
    members = [mesh.m(n) for n in (gw, fake_gw, exit_node, mesh.mon, mesh.impostor)]
    grants = route_grants([(sp, op)], members, mesh.org_names)
    got = {(g.member, str(g.prefix), g.source) for g in grants}
    assert got == {
        (gw.key, "10.20.0.0/24", "org acme (serial 9) line 2"),
        (mesh.mon.key, "fd00:1::/64", "org acme (serial 9) line 3"),
        (exit_node.key, "0.0.0.0/0", "org acme (serial 9) line 5"),
        (exit_node.key, "::/0", "org acme (serial 9) line 5"),
    }
    assert {g.member for g in grants if g.exit} == {exit_node.key}
    # without a name for the org, its domain names it
    unnamed = route_grants([(sp, op)], members)
    assert unnamed[0].source.startswith(f"org {org_domain(mesh.acme.public_key.raw)} ")
    assert route_grants([], members) == ()
    assert ipaddress.ip_network("10.20.0.0/24") in {g.prefix for g in grants}


small_rules = st.lists(st.builds(
    lambda allow, proto, a, b: f"{'allow' if allow else 'deny'} {proto} {min(a, b)}-{max(a, b)}",
    st.booleans(), st.sampled_from(["tcp", "udp", "all"]), st.integers(1, 40),
    st.integers(1, 40)), max_size=6)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(peer=small_rules, org=small_rules, glob=small_rules, signed_rules=small_rules,
       default=st.sampled_from([None, "allow", "deny"]))
def test_the_table_decides_as_the_files_read_in_order(
    tmp_path_factory: pytest.TempPathFactory, peer: list[str], org: list[str],
    glob: list[str], signed_rules: list[str], default: str | None,
) -> None:
    cfg = tmp_path_factory.mktemp("cfg")
    mesh = Mesh(cfg)
    s = cfg / "services"
    s.mkdir()
    files = {s / "peer" / "db-1.policy": peer, s / "org" / "acme.policy": org,
             s / "global.policy": glob}
    for path, lines in files.items():
        write(path, "".join(f"{line}\n" for line in lines))
    if default is not None:
        write(s / "default", default)
    table = mesh.table([signed(mesh.acme, "".join(f"{x}\n" for x in signed_rules))])
    chains = {
        "db": [peer, org, glob, signed_rules],  # authorized key db-1, acme certificate
        "plain": [org, glob, signed_rules],  # acme certificate
        "keyed": [glob, signed_rules],  # another org's certificate
    }
    for who, levels in chains.items():
        wg = getattr(mesh, who).wg_public
        for proto_name, proto in (("tcp", PROTO_TCP), ("udp", PROTO_UDP)):
            for port in range(0, 42):
                want = default != "deny"
                for line in (x for level in levels for x in level):
                    action, p, ports = line.split()
                    lo, hi = map(int, ports.split("-"))
                    if p in ("all", proto_name) and lo <= port <= hi:
                        want = action == "allow"
                        break
                assert verdict(table, wg, proto, port) == want, (who, proto_name, port)
