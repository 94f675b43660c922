"""Fuzz targets for `meshguard connect` (testing/fuzz.py): the `mg://` token codec, its text
form, the `seeds` file, and the punch core fed hostile probes.

The token target re-signs every mutated input (`fixup`: check bytes and Ed25519 signature by
the seed token's key), so mutations reach the structure parser behind the signature; the punch
target re-MACs mutated probes under the pair's key, so they reach the core's logic.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from meshguard.crypto.hashes import blake3, mac
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.errors import ConfigError, WireFormatError
from meshguard.identity import pairing_token as tok
from meshguard.identity import saved_seeds
from meshguard.identity.addressing import mesh_ipv4
from meshguard.nat.pairing_punch import PairingPunch, key_tag, probe_key, punch_windows
from meshguard.sansio import SendDatagram
from meshguard.testing.fuzz_engine import RoundTripError, Target
from meshguard.testing.rng import SeededRng
from meshguard.wire import pairing_probe

_KEY = Ed25519PrivateKey(bytes([42]) * 32)
_PEER = Ed25519PrivateKey(bytes([43]) * 32)
_WG, _PEER_WG = X25519PrivateKey(bytes([44]) * 32), X25519PrivateKey(bytes([45]) * 32)
_NONCES = (b"offer-nc", b"reply-nc")


def _token_seeds() -> list[bytes]:
    out = []
    for n, role in ((0, tok.ROLE_OFFER), (3, tok.ROLE_REPLY), (8, tok.ROLE_OFFER)):
        eps = tuple((f"192.168.1.{i + 1}", 51821) if i % 2 == 0 else (f"fd00::{i + 1}", 51821)
                    for i in range(n))
        t = tok.PairingToken(
            identity_key=_KEY.public_key.raw, wg_key=_WG.public_key.raw,
            reflexive=("203.0.113.21", 51821) if n else None,
            mesh_ipv4=str(mesh_ipv4(_KEY.public_key.raw)), punch_time=1_770_000_060,
            punch_window=60, nonce=bytes(8), stun_server=("203.0.113.10", 3478), nat_type=1,
            role=role, expires=1_770_000_120, reply_to=bytes([role]) * 16, endpoints=eps)
        out.append(tok.sign(t, _KEY))
    return out


def _resign(data: bytes) -> bytes:
    """Valid check bytes and a valid signature for whatever structure `data` has."""
    if len(data) < tok.ORIGINAL_LEN + 26 + tok.SIGNATURE_LEN or data[0] != tok.VERSION:
        return data
    b = bytearray(data[:-tok.SIGNATURE_LEN])
    b[1:33] = _KEY.public_key.raw
    b[100:106] = blake3(bytes(b[:100]), 6)
    return bytes(b) + _KEY.sign(tok.SIGN_CONTEXT + bytes(b))


def _token(data: bytes) -> None:
    t = tok.decode_binary(data)
    tok.expiry_problem(t, 1_770_000_000)
    if t.identity_key != _KEY.public_key.raw:
        return
    again = tok.decode_binary(tok.sign(t, _KEY))
    if dataclasses.replace(again, signature=t.signature) != t:
        raise RoundTripError(f"pairing token: {data.hex()} decodes to {t}, re-encoded to "
                             f"{again}")


def _token_text(data: bytes) -> None:
    tok.decode(data.decode("utf-8", "replace"))


def _seeds_file(data: bytes) -> None:
    path = Path("seeds")
    text = saved_seeds.decode_file(data, path)
    before = saved_seeds.parse(text, path)
    after = saved_seeds.parse(saved_seeds.with_entry(text, "peer-a", _PEER.public_key.raw,
                                                     ("203.0.113.22", 51821)), path)
    new = ("203.0.113.22", 51821)
    if new not in after or not set(after) <= set(before) | {new}:
        raise RoundTripError(f"seeds file: {data!r} gains {after} from {before}")


def _punch_core() -> PairingPunch:
    key = probe_key(_WG, _PEER_WG.public_key.raw, *_NONCES)
    return PairingPunch(SeededRng(1), key, _NONCES[0], _KEY.public_key.raw, _NONCES[1],
                        _PEER.public_key.raw, [("203.0.113.22", 51821)],
                        punch_windows(0.0, 1000.0, 1000.0, 60.0, 1))


_CORE = [_punch_core()]


def _punch_fixup(data: bytes) -> bytes:
    if not pairing_probe.is_pairing_probe(data):
        return data
    body = data[:4] + _NONCES[1] + key_tag(_PEER.public_key.raw) + data[16:pairing_probe.BODY_LEN]
    return body + mac(probe_key(_PEER_WG, _WG.public_key.raw, *_NONCES), body)


def _punch(data: bytes) -> None:
    core = _CORE[0]
    core.tick(0.5, 1000.5)
    core.receive(0.5, 1000.5, data, ("203.0.113.22", 51821))
    core.receive(0.5, 1000.5, data, ("198.51.100.9", 4000))


def _reset_punch() -> None:
    _CORE[0] = _punch_core()


def _punch_seeds() -> list[bytes]:
    core = _punch_core()
    probes = [a.data for a in core.tick(0.0, 1000.0) if isinstance(a, SendDatagram)]
    out = []
    for flags in (0, pairing_probe.FLAG_ANSWER, pairing_probe.FLAG_ANSWER | 2):
        out.append(_punch_fixup(probes[0][:16] + bytes([flags]) + probes[0][17:]))
    return out


def pairing_targets() -> list[Target]:
    seeds = _token_seeds()
    texts = [tok.to_uri(s).encode() for s in seeds]
    return [
        Target("pairing_token", seeds, _token, (tok.PairingTokenError,), fixup=_resign,
               max_len=1024),
        Target("pairing_token_text", texts, _token_text, (tok.PairingTokenError,),
               max_len=1200),
        Target("pairing_probe", _punch_seeds(), lambda d: pairing_probe.decode(d),
               (WireFormatError,)),
        Target("pairing_punch", _punch_seeds(), _punch, (), fixup=_punch_fixup,
               reset=_reset_punch, reset_every=64),
        Target("seeds_file", [b"# peer-a x\n203.0.113.22:51821\n", b"[fd00::1]:5\n"],
               _seeds_file, (ConfigError,), max_len=2048),
    ]
