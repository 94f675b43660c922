"""Which WireGuard key a node uses: `wireguard.key`, else the key derived from the identity.

The original meshguard keeps no WireGuard key file: it derives its X25519 key from the Ed25519
identity (libsodium's crypto_sign_ed25519_sk_to_curve25519, `Ed25519PrivateKey.to_x25519`).
So a config dir taken from the original works as it is, and shows the WireGuard key the
original printed (docs/compatibility.md#the-wireguard-key):

- `wireguard.key` present: that is the key. A key made by `rotate-wg-key` always wins over
  the derived one.
- `wireguard.key` absent: the derived key, unless `wireguard.vouch` holds this identity's
  valid vouch for another key. Then the key was rotated and its file has been lost since;
  deriving would bring back the key the rotation replaced, so that is an error naming the fix
  (restore the file, or rotate again, which vouches with a later `issued_at`).

`keygen.load_node_keys` (what `up` loads) writes a derived key on first use, with its public
key and its vouch, in one atomic write; from then on the dir looks like one `meshguard keygen`
made. `meshguard show` only reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.identity import store
from meshguard.identity.errors import IdentityMissingError

FROM_FILE = "file"
DERIVED = "derived"


@dataclass(frozen=True)
class WireGuardKeyChoice:
    key: X25519PrivateKey
    source: str  # FROM_FILE or DERIVED

    @property
    def derived(self) -> bool:
        return self.source == DERIVED


def derived_wireguard_key(identity: Ed25519PrivateKey) -> X25519PrivateKey:
    """The WireGuard key the original meshguard uses for this identity."""
    return identity.to_x25519()


def node_wireguard_key(config_dir: Path, identity: Ed25519PrivateKey) -> WireGuardKeyChoice:
    """The key this node uses (reads only). Raises for a corrupt `wireguard.key`, and for a
    missing one after a rotation (see the module docstring)."""
    if store.exists(config_dir / store.WIREGUARD_KEY):
        return WireGuardKeyChoice(store.load_wireguard_key(config_dir), FROM_FILE)
    derived = derived_wireguard_key(identity)
    vouch = store.load_wireguard_vouch(config_dir, identity.public_key.raw)
    if vouch is not None and vouch.wg_key != derived.public_key.raw:
        raise IdentityMissingError(
            f"no WireGuard key at {config_dir / store.WIREGUARD_KEY}, but "
            f"{store.WIREGUARD_VOUCH} shows it was rotated (the key derived from the identity "
            "is no longer this node's); restore wireguard.key from a backup or run "
            "`meshguard rotate-wg-key`"
        )
    return WireGuardKeyChoice(derived, DERIVED)


__all__ = [
    "DERIVED",
    "FROM_FILE",
    "WireGuardKeyChoice",
    "derived_wireguard_key",
    "node_wireguard_key",
]
