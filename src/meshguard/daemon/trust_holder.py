"""The daemon's admission policy: a holder whose trust store is swapped on reload, so SWIM and
the node keep one object while the files under the config directory change."""

from __future__ import annotations

import logging

from meshguard.errors import MeshguardError
from meshguard.identity.trust import Admission, TrustStore
from meshguard.mesh import org_gossip
from meshguard.wire.org import CertRevocation, OrgVouch

log = logging.getLogger("meshguard.daemon")


class TrustHolder:
    """The admission policy handed to SWIM and the node; the store inside is swapped on reload."""

    def __init__(self, trust: TrustStore) -> None:
        self.store = trust

    def admit(self, node_key: bytes, certificate: bytes | None, now_wall: float) -> Admission:
        return self.store.admit(node_key, certificate, now_wall)

    def trusted_org_keys(self) -> list[bytes]:
        """Orgs whose signed revocations and aliases this node accepts."""
        return [k for k in self.store.orgs.values() if not self.store.is_org_revoked(k)]

    def signed_revocations(self) -> list[CertRevocation]:
        """The `cert` lines of `revocations` that carry their org signature (re-gossiped)."""
        out = []
        for r in self.store.revocations:
            if r.kind == "cert" and r.org_key is not None:
                sr = org_gossip.from_label(r.org_key, r.key, r.label)
                if sr is not None:
                    out.append(sr)
        return out

    def vouches(self) -> list[OrgVouch]:
        """The vouches kept in vouched/ (re-gossiped, so newcomers get them)."""
        return list(self.store.vouches.values())

    def keep_vouch(self, v: OrgVouch) -> bool:
        """A vouch learned from the mesh goes into vouched/ (atomic) and admits from now on;
        True if the trust store changed."""
        try:
            result = self.store.add_vouch(v)
        except (MeshguardError, OSError) as exc:
            log.error("cannot keep the vouch of org %s for %s: %s", v.org_key.hex()[:12],
                      v.node_key.hex()[:12], exc)
            return False
        if result == "accepted":
            log.info("org %s vouches for %s: admitted (org vouch)", v.org_key.hex()[:12],
                     v.node_key.hex()[:12])
        return result == "accepted"
