"""Real daemons: every member resolves the others' mesh names over DNS (UDP and TCP, A and
AAAA, certificate names and authorized-key names), and an org revocation made on the org
admin's node spreads, is persisted, and tears the revoked node's tunnel down everywhere.

Queries are built by hand here (struct), not by meshguard's own codec, and sent from inside
the member namespaces to the other members' mesh addresses, through the tunnels.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshguard.identity import keygen, store
from meshguard.identity.addressing import org_domain
from meshguard.rng import SystemRng
from meshguard.testing.netns import netns_skip_reason

from .meshnet import MeshLan, Node

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
]

QUERY = r"""
import json, socket, struct, sys
server, name, qtype, proto = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
q = struct.pack("!HHHHHH", 0x4D47, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
q += struct.pack("!HH", qtype, 1)
fam = socket.AF_INET6 if ":" in server else socket.AF_INET
if proto == "udp":
    s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(2); s.sendto(q, (server, 53))
    r = s.recv(4096)
else:
    s = socket.create_connection((server, 53), timeout=2)
    s.sendall(struct.pack("!H", len(q)) + q)
    n = struct.unpack("!H", s.recv(2))[0]; r = b""
    while len(r) < n: r += s.recv(n - len(r))
qid, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", r[:12])
off = 12 + len(q) - 12
ans = []
for _ in range(an):
    assert r[off:off + 2] == b"\xc0\x0c"
    t, c, ttl, ln = struct.unpack("!HHIH", r[off + 2:off + 12])
    data = r[off + 12:off + 12 + ln]; off += 12 + ln
    ans.append(socket.inet_ntop(socket.AF_INET if t == 1 else socket.AF_INET6, data))
print(json.dumps({"id": qid, "rcode": flags & 15, "aa": bool(flags & 0x400),
                  "echo": r[12:len(q)] == q[12:], "answers": ans, "authority": ns}))
"""


def query(node: Node, server: str, name: str, qtype: int = 1, proto: str = "udp"
          ) -> dict[str, object]:
    res = node.ns.run([sys.executable, "-c", QUERY, server, name, str(qtype), proto],
                      check=False, timeout=20)
    if res.returncode != 0:
        return {"error": res.stderr.strip()[-300:]}
    out = dict(json.loads(res.stdout))
    assert out["id"] == 0x4D47 and out["echo"], out
    return out


class Mesh:
    def __init__(self, lan: MeshLan, admin: Node, b: Node, c: Node, v: Node, domain: str
                 ) -> None:
        self.lan, self.admin, self.b, self.c, self.v = lan, admin, b, c, v
        self.members = [admin, b, c, v]
        self.domain = domain


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("orgdns")
    with MeshLan(tmp) as lan:
        admin, b, c, v = (lan.add_node(n) for n in ("adm", "b", "c", "v"))
        # the org key lives on the admin's node, which is also a member
        org = keygen.generate_org_key(admin.cfg, SystemRng(), force=False)
        for n in (admin, b, c, v):
            keygen.issue_certificate_file(admin.cfg, n.identity, f"node-{n.name}",
                                          n.cfg / store.NODE_CERT, time.time())
            p = n.cfg / store.TRUSTED_ORGS / "fleet.org"
            p.parent.mkdir(mode=0o700, exist_ok=True)
            p.write_text(store.public_key_file(org.public_key.raw).decode())
        # b also trusts c by key, under the local nickname "charlie"
        p = b.cfg / store.AUTHORIZED_KEYS / "charlie.pub"
        p.parent.mkdir(mode=0o700, exist_ok=True)
        p.write_text(store.public_key_file(c.identity).decode())
        admin.up()
        for n in (b, c, v):
            n.up([admin], wait=False)
        for n in (b, c, v):
            lan.wait(n.alive_and_answering, f"{n.name} up", 20)
        m = Mesh(lan, admin, b, c, v, org_domain(org.public_key.raw))
        for x, y in itertools.permutations(m.members, 2):
            lan.wait(lambda x=x, y=y: x.tunnel_to(y), f"{x.name} -> {y.name} tunnel", 25)
        yield m


def test_members_resolve_each_other(mesh: Mesh) -> None:
    dom = mesh.domain
    for asker, server, target in itertools.permutations([mesh.admin, mesh.b, mesh.c], 3):
        name = f"node-{target.name}.{dom}.mesh"
        # the server answers from its own view of the mesh; ask through the tunnel
        mesh.lan.wait(lambda a=asker, s=server, n=name, t=target:
                      query(a, s.mesh_v4, n).get("answers") == [t.mesh_v4],
                      f"{asker.name} asks {server.name} for {name}", 15)
        r6 = query(asker, server.mesh_v6, name, 28)
        assert r6.get("answers") == [target.mesh_v6], r6
        assert r6["aa"] and r6["rcode"] == 0
    tcp = query(mesh.c, mesh.admin.mesh_v4, f"node-b.{dom}.mesh", 1, "tcp")
    assert tcp.get("answers") == [mesh.b.mesh_v4], tcp
    # its own name too, and the authorized-key nickname on the node that has it
    me = query(mesh.b, mesh.b.mesh_v4, f"node-b.{dom}.mesh")
    assert me.get("answers") == [mesh.b.mesh_v4], me
    nick = query(mesh.admin, mesh.b.mesh_v4, "charlie.mesh")
    assert nick.get("answers") == [mesh.c.mesh_v4], nick
    assert query(mesh.admin, mesh.c.mesh_v4, "charlie.mesh").get("rcode") == 3  # b's only
    nx = query(mesh.b, mesh.c.mesh_v4, f"nobody.{dom}.mesh")
    assert (nx.get("rcode"), nx.get("authority")) == (3, 1), nx  # NXDOMAIN with the SOA
    assert query(mesh.b, mesh.c.mesh_v4, "example.com").get("rcode") == 5  # REFUSED


def test_status_lists_each_members_dns_names(mesh: Mesh) -> None:
    dom = mesh.domain
    mesh.lan.wait(lambda: {f"node-c.{dom}.mesh", "charlie.mesh"}
                  <= set((mesh.b.member(mesh.c) or {}).get("dns_names", [])),
                  "b's status names c", 10)
    assert f"node-adm.{dom}.mesh" in mesh.b.member(mesh.admin)["dns_names"]
    table = mesh.b.cli("status", "--interface", mesh.b.iface).stdout
    assert f".{dom}.mesh" in table, table


def test_org_alias_names_resolve_after_sighup(mesh: Mesh) -> None:
    adm = mesh.admin
    res = adm.cli("org-alias", "acme")
    assert res.returncode == 0, res.stderr
    assert adm.proc is not None  # the admin's daemon reads org/alias on SIGHUP, announces it
    os.killpg(adm.proc.pid, signal.SIGHUP)
    for asker, server in ((mesh.b, mesh.c), (mesh.c, mesh.b), (mesh.v, mesh.admin)):
        mesh.lan.wait(lambda a=asker, s=server:
                      query(a, s.mesh_v4, "node-b.acme.mesh").get("answers") == [mesh.b.mesh_v4],
                      f"{asker.name} resolves node-b.acme.mesh at {server.name}", 15)
    assert query(mesh.b, mesh.c.mesh_v4, "node-zz.acme.mesh").get("rcode") == 3


def test_org_revocation_spreads_persists_and_removes_the_tunnel(mesh: Mesh,
                                                                 tmp_path: Path) -> None:
    adm, v = mesh.admin, mesh.v
    out = tmp_path / "v.revoke"
    res = adm.cli("org-revoke", str(v.cfg / store.NODE_CERT), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "signed" in out.read_text()
    others = [adm, mesh.b, mesh.c]
    for n in others:
        mesh.lan.wait(lambda n=n: not n.tunnel_to(v), f"{n.name} drops the revoked node", 20)
    for n in others:
        text = (n.cfg / store.REVOCATIONS).read_text()
        assert "cert " in text and " signed " in text, f"{n.name}: {text}"
        m = n.member(v)
        assert m is None or not m["trusted"]
    # the others keep their tunnels to each other
    for x, y in itertools.permutations(others, 2):
        assert x.tunnel_to(y), f"{x.name} lost {y.name}\n{mesh.lan.logs()}"
    # and the revoked node's name is gone from DNS
    dom = mesh.domain
    mesh.lan.wait(lambda: query(mesh.b, mesh.c.mesh_v4, f"node-v.{dom}.mesh").get("rcode") == 3,
                  "node-v.<dom>.mesh NXDOMAIN", 10)
    # a restarted member still refuses it (the revocation is in its file)
    c = mesh.c
    c.kill(signal.SIGTERM)
    c.up([adm], wait=True)
    mesh.lan.wait(lambda: c.tunnel_to(adm), "c back with a tunnel to the admin", 25)
    m = c.member(v)
    assert m is None or not m["tunnel"]

