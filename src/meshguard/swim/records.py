"""Signed membership records and accusations, and the memo tables that keep crypto cheap.

A node's record (identity key, WireGuard key, endpoints, NAT type, incarnation, certificate,
left flag) is signed by its own identity key: only the subject can say it is alive, refute a
suspicion or leave, and the signature is the identity's vouch for its WireGuard key. Suspect and
Dead notices are signed by the accuser.

Costs: Ed25519 verification is ~50-70 us, X25519 ~30-50 us. `CryptoCache` memoises both as pure
functions of their inputs, so a node verifies each record version once and derives each pair key
once. The memo is sound to share between simulated nodes in one process (it maps
(public key, signature, message) -> bool and (sorted public keys) -> pair key, nothing else),
which is how a 1,000-node simulation avoids a million verifications.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from meshguard.crypto.hashes import blake2s
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey, ed25519_verify
from meshguard.errors import CryptoError, WireFormatError
from meshguard.wire.gossip import (
    SIG_LEN,
    Accusation,
    NodeRecord,
    accusation_signed_part,
    decode_record,
    encode_record,
    record_signed_part,
)

_K = TypeVar("_K")
_V = TypeVar("_V")

RECORD_DOMAIN = b"meshguard-swim-record-v1\x00"
SUSPECT_DOMAIN = b"meshguard-swim-suspect-v1\x00"
DEAD_DOMAIN = b"meshguard-swim-dead-v1\x00"
PAIR_LABEL = b"meshguard-swim-pair-v1\x00"


class AdmissionResult(Protocol):
    @property
    def admitted(self) -> bool: ...


class AdmissionPolicy(Protocol):
    """What the identity layer answers (docs/architecture.md#seams; TrustStore fits)."""

    def admit(
        self, node_key: bytes, certificate: bytes | None, now_wall: float
    ) -> AdmissionResult | bool: ...


def is_admitted(result: AdmissionResult | bool) -> bool:
    if isinstance(result, bool):
        return result
    return bool(result.admitted)


def sign_record(key: Ed25519PrivateKey, rec: NodeRecord) -> tuple[NodeRecord, bytes]:
    """Sign `rec` (its identity must be key's public key); returns (record, raw bytes)."""
    if rec.identity != key.public_key.raw:
        raise CryptoError("a record can only be signed by its own identity key")
    body = record_signed_part(rec)
    sig = key.sign(RECORD_DOMAIN + body)
    signed = NodeRecord(
        identity=rec.identity,
        wg_public=rec.wg_public,
        incarnation=rec.incarnation,
        endpoints=rec.endpoints,
        nat_type=rec.nat_type,
        certificate=rec.certificate,
        left=rec.left,
        signature=sig,
        routes=rec.routes,
    )
    return signed, encode_record(signed)


def sign_accusation(
    key: Ed25519PrivateKey, dead: bool, subject: bytes, incarnation: int
) -> Accusation:
    accuser = key.public_key.raw
    domain = DEAD_DOMAIN if dead else SUSPECT_DOMAIN
    sig = key.sign(domain + accusation_signed_part(subject, incarnation, accuser))
    return Accusation(dead, subject, incarnation, accuser, sig)


class CryptoCache:
    """Pure-function memo tables for record parsing, Ed25519 verification and pair keys.

    `max_entries` bounds each table (cleared wholesale when full; entries are cheap to redo);
    None means unbounded (simulation).
    """

    def __init__(self, max_entries: int | None = 16384) -> None:
        self.max_entries = max_entries
        self._verified: dict[tuple[bytes, bytes, bytes], bool] = {}
        # raw -> (record, the raw bytes as first seen, its 8-byte key prefix), None if malformed
        self._parsed: dict[bytes, tuple[NodeRecord, bytes, bytes] | None] = {}
        self._valid: dict[bytes, bool] = {}
        self._pair: dict[tuple[bytes, bytes, bytes, bytes], bytes | None] = {}
        self.verifications = 0
        self.dh_computations = 0

    def _room(self, table: dict[_K, _V]) -> None:
        if self.max_entries is not None and len(table) >= self.max_entries:
            table.clear()

    def verify(self, public: bytes, signature: bytes, message: bytes) -> bool:
        k = (public, signature, message)
        r = self._verified.get(k)
        if r is None:
            self.verifications += 1
            r = ed25519_verify(public, signature, message)
            self._room(self._verified)
            self._verified[k] = r
        return r

    def parse_record(self, raw: bytes) -> NodeRecord | None:
        """Decode a raw record; None if malformed."""
        parsed = self.record(raw)
        return parsed[0] if parsed is not None else None

    def record(self, raw: bytes) -> tuple[NodeRecord, bytes, bytes] | None:
        """Decode a raw record: (record, raw, identity prefix), or None if malformed.

        The returned raw bytes and prefix are the objects first seen for this record version,
        so every member table that stores them shares one copy (the record's identity likewise
        is the one of the shared NodeRecord): a node that hears a record in many packets, or
        many simulated nodes sharing this cache, hold it once.
        """
        try:
            return self._parsed[raw]
        except KeyError:
            pass
        try:
            rec = decode_record(raw)
        except WireFormatError:
            parsed: tuple[NodeRecord, bytes, bytes] | None = None
        else:
            raw = bytes(raw)
            parsed = (rec, raw, rec.identity[:8])
        self._room(self._parsed)
        self._parsed[raw] = parsed
        return parsed

    def record_valid(self, raw: bytes) -> bool:
        """Signature check of a raw record by its own identity key (memo keyed by the bytes)."""
        r = self._valid.get(raw)
        if r is None:
            r = self.verify(raw[4:36], raw[-SIG_LEN:], RECORD_DOMAIN + raw[:-SIG_LEN])
            self._room(self._valid)
            self._valid[raw] = r
        return r

    def accusation_valid(self, dead: bool, raw: bytes) -> bool:
        accuser = raw[40:72]
        domain = DEAD_DOMAIN if dead else SUSPECT_DOMAIN
        return self.verify(accuser, raw[-SIG_LEN:], domain + raw[:-SIG_LEN])

    def pair_key(
        self, own: X25519PrivateKey, own_id: bytes, peer_wg: bytes, peer_id: bytes
    ) -> bytes | None:
        """MAC key shared by two members: BLAKE2s(label, X25519(wg keys), sorted identities).

        None when the peer's WireGuard key is a low-order point (no shared secret).
        """
        mine = own.public_key.raw
        w0, w1 = (mine, peer_wg) if mine < peer_wg else (peer_wg, mine)
        a, b = (own_id, peer_id) if own_id < peer_id else (peer_id, own_id)
        k = (w0, w1, a, b)
        try:
            return self._pair[k]
        except KeyError:
            pass
        self.dh_computations += 1
        try:
            shared = own.exchange(peer_wg)
        except CryptoError:
            key: bytes | None = None
        else:
            key = blake2s(PAIR_LABEL, shared, w0, w1, a, b)
        self._room(self._pair)
        self._pair[k] = key
        return key
