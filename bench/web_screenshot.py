#!/usr/bin/env python3
"""Regenerate docs/web.png: `meshguard web` of a real 5-node mesh, in headless chromium.

    flock /tmp/meshguard-netns.lock .venv/bin/python bench/web_screenshot.py [--out docs/web.png]

Needs root, nft, coturn and chromium (./dev installs them). The mesh is tests/daemon/natnet.py's
lab: a public seed with STUN, two more public members (nas, office), and two laptops (alice,
bob) behind cone NATs of their own whose direct path to each other is cut, so they talk
relayed through another member. Every member has a certificate of one org, which names it.
The picture is alice's page, taken once every member has a handshake, some traffic and (if
direct) a measured RTT.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meshguard.identity import keygen, store  # noqa: E402
from meshguard.rng import SystemRng  # noqa: E402
from meshguard.testing.headless_chromium import screenshot  # noqa: E402
from tests.daemon.meshnet import Node, start_web  # noqa: E402
from tests.daemon.natnet import CONE, PUB, NatLan  # noqa: E402

PORT = 8385


def _certify(org_home: Node, nodes: list[Node]) -> None:
    org = keygen.generate_org_key(org_home.cfg, SystemRng(), force=False)
    for n in nodes:
        keygen.issue_certificate_file(org_home.cfg, n.identity, n.name,
                                      n.cfg / store.NODE_CERT, time.time())
        p = n.cfg / store.TRUSTED_ORGS / "fleet.org"
        p.parent.mkdir(mode=0o700, exist_ok=True)
        p.write_text(store.public_key_file(org.public_key.raw).decode())


def _ready(view: Node, others: list[Node]) -> bool:
    members = {m["name"]: m for m in view.status()["members"]}
    return all(
        (m := members.get(o.name)) is not None and m["last_handshake"] and m["rx_bytes"] > 0
        and (m["rtt_ms"] is not None or m["path"] == "relayed")  # relayed paths: no probes
        for o in others
    ) and members.get("bob", {}).get("path") == "relayed"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "web.png")
    ap.add_argument("--size", default="1280,800", help="window WIDTH,HEIGHT")
    ap.add_argument("--timeout", type=float, default=90, help="seconds for the mesh to settle")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split(","))
    with tempfile.TemporaryDirectory(prefix="mg-web-") as tmp, NatLan(Path(tmp)) as lan:
        seed = lan.add_public("seed", PUB)
        nas = lan.add_public("nas", "203.0.113.11")
        office = lan.add_public("office", "203.0.113.12")
        alice = lan.add_behind_nat("alice", "203.0.113.21", "192.168.10", CONE)
        bob = lan.add_behind_nat("bob", "203.0.113.22", "192.168.20", CONE)
        lan.cut("alice", "203.0.113.22")
        nodes = [seed, nas, office, alice, bob]
        _certify(seed, nodes)
        stun = lan.start_stun(seed)
        seed.up(None, *stun)
        for n in nodes[1:]:
            n.up([seed], *stun, wait=False)
        for n in nodes[1:]:
            lan.wait(n.alive_and_answering, f"{n.name} up", 30)
        others = [n for n in nodes if n is not alice]
        deadline = time.monotonic() + args.timeout
        while not _ready(alice, others):
            if time.monotonic() > deadline:
                print("the mesh did not settle; taking the picture anyway", file=sys.stderr)
                break
            for o in others:
                alice.ns.ping(o.mesh_v4, count=1, wait=0.3)
            time.sleep(0.5)
        for o in others:  # some traffic both ways, so rx and tx differ per member
            alice.ns.ping(o.mesh_v4, count=3, wait=1.0, interval=0.2)
        start_web(alice, PORT)
        screenshot(alice.ns, f"http://127.0.0.1:{PORT}/", Path(tmp) / "chromium", args.out,
                   (width, height), budget_ms=2500)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
