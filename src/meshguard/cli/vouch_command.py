"""`meshguard org-vouch NODE-KEY|FILE.pub` (org admin, where org/org.key lives): vouch for an
external node that holds no certificate, as the original meshguard does.

The vouch (identity/vouch.py) is signed by the org key over node key || lamport (unix seconds)
and written to `vouched/<node hex16>.vouch` in the original's 136-byte format. A daemon
running here notices the new file (its trust poller, within 2 s) and spreads the vouch through
the mesh (OrgTrustVouch 0x43); every node that trusts the org admits the node and keeps the
vouch in its own vouched/. `meshguard org-revoke NODE-KEY` ends it (docs/policy.md#org-vouches).
"""

from __future__ import annotations

import argparse
import time

from meshguard.errors import MeshguardError


class VouchError(MeshguardError):
    """The vouch cannot be made."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("org-vouch", help="vouch for an external node without a certificate "
                                         "(org admin); nodes trusting the org accept it")
    p.add_argument("node", metavar="NODE-KEY", help="the node's base64 identity key or its "
                                                    ".pub file")
    p.set_defaults(func=cmd_org_vouch)


def cmd_org_vouch(args: argparse.Namespace) -> int:
    from meshguard.config import resolve_config_dir
    from meshguard.crypto.keys import b64encode
    from meshguard.identity import store
    from meshguard.identity.trust import TrustStore
    from meshguard.identity.vouch import sign_vouch, write_vouch

    cfg = resolve_config_dir()
    org = store.load_org_key(cfg)
    node_key = store.read_public_key_argument(args.node, "node key")
    org_key = org.public_key.raw
    if node_key == org_key:
        raise VouchError("that is the org's own key; pass the external node's identity key")
    trust = TrustStore.load(cfg)
    if trust.is_key_revoked(node_key) or trust.is_cert_revoked(org_key, node_key):
        raise VouchError(f"{b64encode(node_key)} is revoked here; a vouch would admit nobody "
                         "(remove its line from the revocations file first)")
    existing = trust.vouches.get((org_key, node_key))
    if existing is not None:
        path = trust.vouch_paths[(org_key, node_key)]
        print("This org already vouches for that node.")
        print(f"  node pubkey: {b64encode(node_key)}")
        print(f"  saved to:    {path}")
        return 0
    path = write_vouch(cfg, sign_vouch(org, node_key, int(time.time())))
    print("Vouch signed for external node.")
    print(f"  node pubkey: {b64encode(node_key)}")
    print(f"  saved to:    {path}")
    print("\nA daemon running here gossips it to all org members now (or at its next start).")
    print("All nodes trusting this org will auto-accept the vouched node.")
    return 0
