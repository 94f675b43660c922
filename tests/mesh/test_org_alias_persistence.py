"""Received org aliases survive a restart: the daemon keeps each one it learns in the config
dir's `org_aliases` and gives them back to the new node object at start-up, where each line is
verified again; a tampered or forged line is refused and counted, never trusted."""

from __future__ import annotations

from pathlib import Path

from meshguard.clock import Clock
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.daemon.mesh_daemon import DaemonConfig, MeshDaemon
from meshguard.daemon.trust_holder import TrustHolder
from meshguard.dns.resolver import Resolver, build_table
from meshguard.identity import store
from meshguard.identity.org_aliases import (
    MAX_ALIASES,
    ORG_ALIASES,
    SAVE_INTERVAL,
    format_alias_line,
    load_aliases,
    save_aliases,
)
from meshguard.identity.trust import TrustStore
from meshguard.mesh.node import AliasLearned
from meshguard.mesh.org_gossip import sign_alias
from meshguard.testing.rng import SeededRng
from meshguard.wire import dns

from .helpers import OrgNet, SimNode, cluster


def _daemon(cfg: Path, sn: SimNode, clock: Clock | None = None) -> MeshDaemon:
    d = MeshDaemon(DaemonConfig("mg-alias", 51821, [], run_dir=cfg / "run", config_dir=cfg,
                                env={}), clock)
    d.node = sn.node
    d.trust = TrustHolder(TrustStore.load(cfg))
    return d


def _restart(net: OrgNet, sn: SimNode, cfg: Path) -> SimNode:
    """A new node object for the same identity, started by the daemon's start-up code (no
    network: nothing can teach it the alias again)."""
    keys = (sn.ident, X25519PrivateKey.generate(SeededRng(len(sn.name)).bytes(32)))
    fresh = net.add_cert_node(sn.name, sn.ep[0], keys=keys)
    assert fresh.node.org is not None and not fresh.node.org.aliases
    _daemon(cfg, fresh)._load_org_items()
    return fresh


def _resolves(sn: SimNode, name: str, wall: float) -> bool:
    r = Resolver(build_table(sn.node.dns_table(wall)))
    resp = dns.parse_response(r.handle(dns.build_query(1, name, dns.TYPE_AAAA)) or b"")
    return bool(resp.answers) and resp.answers[0][1] == bytes(sn.node.self_ipv6.packed)


def test_a_received_alias_resolves_after_a_restart_and_a_tampered_file_is_refused(
    tmp_path: Path,
) -> None:
    net, nodes = cluster(3, seed=12)
    a, b = nodes[0], nodes[1]
    cfg = tmp_path / "b"
    store.ensure_dir(cfg)
    wall = net.clock.wall()
    assert a.node.announce_alias(sign_alias(net.org, "acme", int(wall)))
    net.run(5.0)
    learned = [e for e in b.events if isinstance(e, AliasLearned)]
    assert [e.alias.alias for e in learned] == ["acme"]
    assert _resolves(b, "node-1.acme.mesh", wall)
    _daemon(cfg, b)._on_actions(list(learned))  # what the running daemon does with them
    assert (cfg / ORG_ALIASES).read_text() == format_alias_line(learned[0].alias)

    fresh = _restart(net, b, cfg)
    assert fresh.node is not b.node
    assert _resolves(fresh, "node-1.acme.mesh", net.clock.wall())
    org = fresh.node.org
    assert org is not None and org.counters["org_alias_file_refused"] == 0

    # one byte changed in the alias: the org signature no longer covers it
    good = (cfg / ORG_ALIASES).read_text()
    (cfg / ORG_ALIASES).write_text(good.replace(" acme ", " acmf "))
    fresh = _restart(net, b, cfg)
    org = fresh.node.org
    assert org is not None and org.aliases == {}
    assert org.counters["org_alias_file_refused"] == 1
    assert not _resolves(fresh, "node-1.acme.mesh", net.clock.wall())
    assert not _resolves(fresh, "node-1.acmf.mesh", net.clock.wall())

    # a line correctly signed, by an org this node does not trust: refused as from the mesh
    stranger = Ed25519PrivateKey(b"\x44" * 32)
    (cfg / ORG_ALIASES).write_text(format_alias_line(sign_alias(stranger, "acme", int(wall))))
    fresh = _restart(net, b, cfg)
    org = fresh.node.org
    assert org is not None and org.aliases == {}
    assert org.counters["org_alias_untrusted"] == 1
    assert not _resolves(fresh, "node-1.acme.mesh", net.clock.wall())


def test_the_kept_file_is_bounded_and_keeps_the_newest_alias_per_org(tmp_path: Path) -> None:
    orgs = [Ed25519PrivateKey(bytes([i % 256, i // 256]) * 16) for i in range(MAX_ALIASES + 4)]
    aliases = [sign_alias(o, f"org-{i}", 1_800_000_000) for i, o in enumerate(orgs)]
    newer = sign_alias(orgs[0], "renamed", 1_800_000_100)
    save_aliases(tmp_path, [*aliases, newer])
    lines = (tmp_path / ORG_ALIASES).read_text().splitlines()
    assert len(lines) == MAX_ALIASES
    kept = load_aliases(tmp_path)
    assert len(kept.aliases) == MAX_ALIASES and kept.refused == 0
    by_org = {x.org_key: x for x in kept.aliases}
    assert by_org.get(orgs[0].public_key.raw, newer) == newer  # never the older of org 0
    # a file grown beyond the bound (by hand): only MAX_ALIASES lines are verified
    extra = "".join(format_alias_line(x) for x in aliases[:8])
    (tmp_path / ORG_ALIASES).write_text("\n".join(lines) + "\n" + extra + "garbage\n")
    kept = load_aliases(tmp_path)
    assert len(kept.aliases) == MAX_ALIASES and kept.refused == 9
    (tmp_path / ORG_ALIASES).write_bytes(b"\xff" * 100_000)  # no lines, too large
    kept = load_aliases(tmp_path)
    assert kept.aliases == () and kept.refused >= 1


def test_a_trusted_org_renaming_itself_fast_costs_one_write_per_interval(tmp_path: Path) -> None:
    """A rogue org admin signs a newer alias every 20 ms (the verify budget lets 32 a second
    through per sender): the node writes `org_aliases` at once for the first, then at most
    once per SAVE_INTERVAL, the newest alias then; a change still unwritten is written when
    the daemon leaves."""
    net, nodes = cluster(3, seed=13)
    b = nodes[1]
    cfg = tmp_path / "b"
    store.ensure_dir(cfg)
    d = _daemon(cfg, b, net.clock)
    org = b.node.org
    assert org is not None
    base = int(net.clock.wall())

    def rename(i: int) -> None:
        a = sign_alias(net.org, f"r{i}", base + i)
        assert org.add_alias(a, b.node.trusted_orgs(), net.clock.wall())
        d._on_actions([AliasLearned(a)])
        net.clock.advance(0.02)

    for i in range(50):
        rename(i)
    assert (cfg / ORG_ALIASES).read_text().split()[2] == "r0"  # the first, at once
    net.clock.advance(SAVE_INTERVAL)
    d._keep_aliases()  # the daemon's poll
    assert (cfg / ORG_ALIASES).read_text().split()[2] == "r49"
    rename(50)
    assert (cfg / ORG_ALIASES).read_text().split()[2] == "r49"
    d._keep_aliases(leaving=True)
    assert (cfg / ORG_ALIASES).read_text().split()[2] == "r50"
