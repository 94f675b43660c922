"""The guided demo run by `./dev demo`.

`identity_demo()` walks through identity, org certificates, trust and revocation for one org
and three nodes, each with its own config dir in a temporary directory that is removed at the
end. It uses the real `meshguard` commands (in-process) and the real trust store.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meshguard.cli.main import main as meshguard
from meshguard.config import ENV_CONFIG_DIR
from meshguard.identity import store
from meshguard.identity.addressing import assign_ipv4, mesh_ipv6, org_domain
from meshguard.identity.names import node_dns_name
from meshguard.identity.trust import TrustStore

NODES = ("alpha", "beta", "gamma")


def _say(text: str) -> None:
    print(f"\n== {text}")


@contextmanager
def _as(config_dir: Path) -> Iterator[None]:
    """Run the commands inside with `config_dir` as the config dir."""
    old = os.environ.get(ENV_CONFIG_DIR)
    os.environ[ENV_CONFIG_DIR] = str(config_dir)
    try:
        yield
    finally:
        if old is None:
            del os.environ[ENV_CONFIG_DIR]
        else:
            os.environ[ENV_CONFIG_DIR] = old


def _run(who: str, *argv: str) -> None:
    print(f"[{who}] $ meshguard {' '.join(argv)}")
    rc = meshguard(list(argv))
    if rc != 0:
        raise SystemExit(f"demo step failed: meshguard {' '.join(argv)} (exit {rc})")


def _run_refused(who: str, *argv: str) -> None:
    print(f"[{who}] $ meshguard {' '.join(argv)}")
    sys.stderr.flush()
    rc = meshguard(list(argv))
    sys.stderr.flush()
    if rc == 0:
        raise SystemExit(f"demo step should have been refused: meshguard {' '.join(argv)}")
    print(f"  (refused with exit {rc}, as expected)")


def _admission_table(viewer: str, dirs: dict[str, Path]) -> None:
    trust = TrustStore.load(dirs[viewer])
    now = time.time()
    for name in NODES:
        if name == viewer:
            continue
        key = store.load_identity(dirs[name]).public_key.raw
        cert_path = dirs[name] / store.NODE_CERT
        cert = cert_path.read_bytes() if cert_path.exists() else None
        adm = trust.admit(key, cert, now)
        verdict = "ADMIT " if adm.admitted else "REFUSE"
        dns = f", {node_dns_name(adm.name, adm.org_domain)}" if adm.name and adm.org_domain else ""
        print(f"  {viewer} sees {name:<6} -> {verdict} ({adm.reason}{dns})")


def identity_demo() -> int:
    with tempfile.TemporaryDirectory(prefix="meshguard-demo-") as tmp:
        root = Path(tmp)
        org_dir = root / "org-admin"
        dirs = {name: root / name for name in NODES}
        print(f"meshguard identity demo: one org and three nodes, each in its own dir under {root}")

        _say("1. The org admin creates an org keypair; its hash gives the org a mesh domain.")
        with _as(org_dir):
            _run("org-admin", "org-keygen")
        org_pub = store.load_org_key(org_dir).public_key

        _say("2. Each node creates an Ed25519 identity and a separate WireGuard key.")
        for name in NODES:
            with _as(dirs[name]):
                _run(name, "keygen")

        _say("3. The org signs each node's public key and name into a 186-byte certificate.")
        for name in NODES:
            with _as(org_dir):
                cert_out = dirs[name] / store.NODE_CERT
                _run(
                    "org-admin",
                    "org-sign",
                    str(dirs[name] / store.IDENTITY_PUB),
                    "--name",
                    name,
                    "--out",
                    str(cert_out),
                )

        _say("4. Every node trusts the org key once; nodes with its certificate are admitted.")
        for name in NODES:
            with _as(dirs[name]):
                _run(name, "trust", org_pub.b64(), "--org", "--name", "demo-org")

        _say("5. Individual trust works too: gamma also trusts alpha's key directly.")
        with _as(dirs["gamma"]):
            _run("gamma", "trust", str(dirs["alpha"] / store.IDENTITY_PUB), "--name", "alpha")

        _say("6. Everything a node knows about itself, offline:")
        with _as(dirs["alpha"]):
            _run("alpha", "show")

        _say("7. Mesh addresses and names are derived from the keys; no coordination needed.")
        keys = {name: store.load_identity(dirs[name]).public_key.raw for name in NODES}
        assigned = assign_ipv4(keys.values())
        domain = org_domain(org_pub.raw)
        for name in NODES:
            dns = node_dns_name(name, domain)
            print(f"  {name:<6} {assigned[keys[name]]!s:<15} {mesh_ipv6(keys[name])!s:<32} {dns}")

        _say("8. Who would alpha admit into the mesh?")
        _admission_table("alpha", dirs)

        _say("9. Alpha revokes gamma. The refusal is persistent: re-adding gamma's key won't help.")
        with _as(dirs["alpha"]):
            _run("alpha", "revoke", keys_b64(keys["gamma"]))
        print(f"  {dirs['alpha'] / store.REVOCATIONS}:")
        for line in (dirs["alpha"] / store.REVOCATIONS).read_text().splitlines():
            print(f"    {line}")
        with _as(dirs["alpha"]):
            _run_refused("alpha", "trust", str(dirs["gamma"] / store.IDENTITY_PUB), "--name", "g2")
        _admission_table("alpha", dirs)

        _say("10. Beta rotates its WireGuard key; its identity signs the new one (a 'vouch').")
        with _as(dirs["beta"]):
            _run("beta", "rotate-wg-key")
        vouch = store.load_wireguard_vouch(dirs["beta"], keys["beta"])
        ok = vouch is not None and vouch.verify()
        print(f"  vouch verifies with beta's identity key: {ok}")

        _say(f"Done; removing {root}.")
    return 0


def keys_b64(raw: bytes) -> str:
    return store.public_key_file(raw).decode("ascii").strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="./dev demo",
        description="Run a real meshguard mesh in network namespaces (default), or the offline "
        "identity/trust/org walk-through.",
    )
    parser.add_argument("--nodes", type=int, default=4, help="mesh size (2-20, default 4)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the mesh running until Enter is pressed")
    parser.add_argument("--offline", action="store_true",
                        help="only the offline identity, trust and org certificate walk-through")
    args = parser.parse_args(argv)
    if args.offline:
        return identity_demo()
    from meshguard.mesh_demo import mesh_demo

    return mesh_demo(args.nodes, args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
