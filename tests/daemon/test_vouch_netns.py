"""Real daemons: an org vouch admits an external node that holds no certificate, on every node
that trusts the org, and an org revocation drops it everywhere (docs/policy.md#org-vouches).

Three org members (the admin's node among them) and an external node x with its own identity
and no certificate; x trusts the org, so it admits the members by their certificates. Before
the vouch nobody admits x; after `org-vouch` on the admin's node every member does, and keeps
the vouch in its vouched/; after `org-revoke` every member drops x and its vouch file.
"""

from __future__ import annotations

import base64
import itertools
import time
from pathlib import Path

import pytest

from meshguard.identity import keygen, store
from meshguard.identity.vouch import VOUCH_LEN, VOUCHED_DIR
from meshguard.rng import SystemRng
from meshguard.testing.netns import netns_skip_reason

from .meshnet import MeshLan, Node

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
]


def _vouch_files(n: Node) -> list[Path]:
    d = n.cfg / VOUCHED_DIR
    return sorted(d.glob("*.vouch")) if d.is_dir() else []


def test_a_vouched_external_node_is_admitted_and_a_revocation_drops_it(tmp_path: Path) -> None:
    with MeshLan(tmp_path) as lan:
        adm, b, c, x = (lan.add_node(n) for n in ("adm", "b", "c", "x"))
        org = keygen.generate_org_key(adm.cfg, SystemRng(), force=False)
        for n in (adm, b, c, x):
            p = n.cfg / store.TRUSTED_ORGS / "fleet.org"
            p.parent.mkdir(mode=0o700, exist_ok=True)
            p.write_text(store.public_key_file(org.public_key.raw).decode())
        members = [adm, b, c]
        for n in members:  # x gets no certificate
            keygen.issue_certificate_file(adm.cfg, n.identity, f"node-{n.name}",
                                          n.cfg / store.NODE_CERT, time.time())
        adm.up()
        for n in (b, c):
            n.up([adm], wait=False)
        for n in (b, c):
            lan.wait(n.alive_and_answering, f"{n.name} up", 20)
        for p, q in itertools.permutations(members, 2):
            lan.wait(lambda p=p, q=q: p.tunnel_to(q), f"{p.name} -> {q.name} tunnel", 25)
        x.up([adm])

        # before the vouch: x knocks (its joins retry), nobody admits it
        time.sleep(2.5)
        for n in members:
            m = n.member(x)
            assert m is None or not m["tunnel"], f"{n.name} admitted x unvouched: {m}"
        assert not x.tunnel_to(adm)

        x_key = base64.b64encode(x.identity).decode()
        res = adm.cli("org-vouch", x_key)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("Vouch signed for external node."), res.stdout
        assert f"node pubkey: {x_key}" in res.stdout
        [made] = _vouch_files(adm)
        assert made.name == f"{x.identity[:8].hex()}.vouch"
        assert len(made.read_bytes()) == VOUCH_LEN
        t0 = time.monotonic()
        for n in members:
            lan.wait(lambda n=n: n.tunnel_to(x), f"{n.name} admits the vouched x", 30)
        admitted = time.monotonic() - t0
        for n in members:
            lan.wait(lambda n=n: x.tunnel_to(n), f"x's tunnel to {n.name}", 15)
            m = n.member(x)
            assert m is not None and m["trusted"] and m["admission"] == "org vouch", m
            # kept where the trust store reads it, so it survives a restart
            assert [f.read_bytes() for f in _vouch_files(n)] == [made.read_bytes()], n.name
        lan.wait(lambda: b.ping(x), "b pings x through the tunnel", 10)
        assert "(org vouch)" in b.cli("status", "--interface", b.iface).stdout
        shown = c.cli("show").stdout
        assert "vouched nodes: 1" in shown and f"{x_key}  by" in shown and "org vouch" in shown

        out = tmp_path / "x.revoke"
        res = adm.cli("org-revoke", x_key, "--out", str(out))
        assert res.returncode == 0, res.stderr
        assert "revoked the vouch for" in res.stdout, res.stdout
        t1 = time.monotonic()
        for n in members:
            lan.wait(lambda n=n: not n.tunnel_to(x), f"{n.name} drops x after the revocation",
                     20)
        dropped = time.monotonic() - t1
        for n in members:
            lan.wait(lambda n=n: not _vouch_files(n), f"{n.name} removes x's vouch file", 10)
            m = n.member(x)
            assert m is None or not m["trusted"], m
            assert " signed " in (n.cfg / store.REVOCATIONS).read_text(), n.name
        for p, q in itertools.permutations(members, 2):
            assert p.tunnel_to(q), f"{p.name} lost {q.name}\n{lan.logs()}"
        print(f"\nvouch: admitted by every member {admitted:.1f} s after org-vouch, "
              f"dropped by every member {dropped:.1f} s after org-revoke")
