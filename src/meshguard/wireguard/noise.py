"""Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s as WireGuard uses it (paper section 5.4.2-5.4.5).

Pure functions over a symmetric state (chaining key `ck`, hash `h`); each step is labelled
with its Noise token:

    <- s                         (pre-message: the responder's static key is known)
    -> e, es, s, ss, {t}         (initiation; {t} = encrypted TAI64N timestamp)
    <- e, ee, se, psk, {}        (response; {} = encrypted empty payload)

The prologue (WireGuard's identifier string) and both payloads are parameters, so the core can
be checked against the generic Noise test vector (tests/wireguard/test_vector.py). Message
framing, indices and MACs belong to the device and wire layers, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshguard.crypto.aead import chacha20poly1305_open, chacha20poly1305_seal, wg_nonce
from meshguard.crypto.hashes import blake2s, kdf1, kdf2, kdf3
from meshguard.crypto.keys import X25519PrivateKey
from meshguard.wireguard.constants import CONSTRUCTION, IDENTIFIER

_ZERO_NONCE = wg_nonce(0)
_INITIAL_CK = blake2s(CONSTRUCTION)
_INITIAL_H = blake2s(_INITIAL_CK, IDENTIFIER)


def initial_state(responder_static: bytes, prologue: bytes = IDENTIFIER) -> tuple[bytes, bytes]:
    """(ck, h) after the protocol name, the prologue and the `<- s` pre-message."""
    ck = _INITIAL_CK
    h = _INITIAL_H if prologue == IDENTIFIER else blake2s(ck, prologue)
    return ck, blake2s(h, responder_static)


def _aead_seal(key: bytes, plaintext: bytes, h: bytes) -> bytes:
    return chacha20poly1305_seal(key, _ZERO_NONCE, plaintext, h)


def _aead_open(key: bytes, ciphertext: bytes, h: bytes) -> bytes:
    return chacha20poly1305_open(key, _ZERO_NONCE, ciphertext, h)


@dataclass(frozen=True, slots=True)
class InitiationBody:
    """The Noise part of an initiation: e, encrypted s, encrypted payload (timestamp)."""

    ephemeral: bytes
    encrypted_static: bytes
    encrypted_payload: bytes


@dataclass(frozen=True, slots=True)
class ResponseBody:
    """The Noise part of a response: e and the encrypted (normally empty) payload."""

    ephemeral: bytes
    encrypted_payload: bytes


@dataclass(slots=True)
class InitiatorState:
    """What the initiator keeps between sending the initiation and consuming the response."""

    ck: bytes
    h: bytes
    ephemeral: X25519PrivateKey
    remote_static: bytes


@dataclass(slots=True)
class ResponderState:
    """What the responder learned from a valid initiation."""

    ck: bytes
    h: bytes
    remote_ephemeral: bytes
    remote_static: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class Session:
    """The outcome of a completed handshake: final chaining key and handshake hash."""

    ck: bytes
    h: bytes
    payload: bytes

    def transport_keys(self, initiator: bool) -> tuple[bytes, bytes]:
        """(send key, receive key): KDF2(ck, empty) gives initiator->responder first."""
        t1, t2 = kdf2(self.ck, b"")
        return (t1, t2) if initiator else (t2, t1)


def create_initiation(
    static: X25519PrivateKey,
    responder_static: bytes,
    ephemeral: X25519PrivateKey,
    payload: bytes,
    prologue: bytes = IDENTIFIER,
    static_static: bytes | None = None,
) -> tuple[InitiationBody, InitiatorState]:
    """Initiator, message 1. `static_static` is DH(s_i, S_r) when precomputed.

    Raises CryptoError for a low-order responder key.
    """
    ck, h = initial_state(responder_static, prologue)
    # e
    e_pub = ephemeral.public_key.raw
    h = blake2s(h, e_pub)
    ck = kdf1(ck, e_pub)
    # es
    ck, k = kdf2(ck, ephemeral.exchange(responder_static))
    # s
    enc_static = _aead_seal(k, static.public_key.raw, h)
    h = blake2s(h, enc_static)
    # ss
    ss = static_static if static_static is not None else static.exchange(responder_static)
    ck, k = kdf2(ck, ss)
    # {t}
    enc_payload = _aead_seal(k, payload, h)
    h = blake2s(h, enc_payload)
    return (
        InitiationBody(e_pub, enc_static, enc_payload),
        InitiatorState(ck, h, ephemeral, responder_static),
    )


def consume_initiation(
    static: X25519PrivateKey,
    body: InitiationBody,
    prologue: bytes = IDENTIFIER,
    static_static_for: dict[bytes, bytes] | None = None,
) -> ResponderState:
    """Responder, message 1. Raises CryptoError when it does not authenticate.

    `static_static_for` maps a known initiator static key to its precomputed DH(s_r, S_i).
    """
    ck, h = initial_state(static.public_key.raw, prologue)
    # e
    h = blake2s(h, body.ephemeral)
    ck = kdf1(ck, body.ephemeral)
    # es
    ck, k = kdf2(ck, static.exchange(body.ephemeral))
    # s
    remote_static = _aead_open(k, body.encrypted_static, h)
    h = blake2s(h, body.encrypted_static)
    # ss
    ss = static_static_for.get(remote_static) if static_static_for is not None else None
    if ss is None:
        ss = static.exchange(remote_static)
    ck, k = kdf2(ck, ss)
    # {t}
    payload = _aead_open(k, body.encrypted_payload, h)
    h = blake2s(h, body.encrypted_payload)
    return ResponderState(ck, h, body.ephemeral, remote_static, payload)


def create_response(
    state: ResponderState, ephemeral: X25519PrivateKey, psk: bytes, payload: bytes = b""
) -> tuple[ResponseBody, Session]:
    """Responder, message 2. Raises CryptoError for low-order initiator keys."""
    ck, h = state.ck, state.h
    # e
    e_pub = ephemeral.public_key.raw
    h = blake2s(h, e_pub)
    ck = kdf1(ck, e_pub)
    # ee
    ck = kdf1(ck, ephemeral.exchange(state.remote_ephemeral))
    # se
    ck = kdf1(ck, ephemeral.exchange(state.remote_static))
    # psk
    ck, tau, k = kdf3(ck, psk)
    h = blake2s(h, tau)
    # {}
    enc_payload = _aead_seal(k, payload, h)
    h = blake2s(h, enc_payload)
    return ResponseBody(e_pub, enc_payload), Session(ck, h, payload)


def consume_response(
    state: InitiatorState, static: X25519PrivateKey, body: ResponseBody, psk: bytes
) -> Session:
    """Initiator, message 2. Raises CryptoError when it does not authenticate."""
    ck, h = state.ck, state.h
    # e
    h = blake2s(h, body.ephemeral)
    ck = kdf1(ck, body.ephemeral)
    # ee
    ck = kdf1(ck, state.ephemeral.exchange(body.ephemeral))
    # se
    ck = kdf1(ck, static.exchange(body.ephemeral))
    # psk
    ck, tau, k = kdf3(ck, psk)
    h = blake2s(h, tau)
    # {}
    payload = _aead_open(k, body.encrypted_payload, h)
    h = blake2s(h, body.encrypted_payload)
    return Session(ck, h, payload)
