"""Transport messages: framing, sealing, and the receive policy (docs/wire-format.md).

This module is the one place that says what a received transport message must pass before
its packet reaches the TUN, for the Device's slow path and the data-plane engine alike (as
wireguard-go's device/receive.go serves every reader):

    1. the receiver index names a live keypair      (else unknown_index; the caller looks it up)
    2. the message authenticates under its key      (else bad_auth, or replay: see below)
    3. the replay window accepts its counter        (else replay)
    4. an empty payload is a keepalive              (authenticated, nothing written)
    5. the payload is one IPv4/IPv6 packet          (else bad_inner; still authenticated)
    6. its inner source is routed to the sender     (else bad_source; still authenticated)

Decrypting happens before the replay window is consulted (a batch is opened in one call, in C
when built); a message that fails to authenticate counts as a replay when its counter would
have been refused anyway, which gives the verdicts of checking the window first.

Sealing: `seal_batch` is the Python implementation of the transport layout (16-byte header,
payload zero-padded to 16, ChaCha20-Poly1305 with the counter as nonce); the C fast path's
`seal_segments` is the other one, and tests hold them to the same bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from meshguard.crypto.aead import TransportCipher
from meshguard.wire import wireguard as wire

if TYPE_CHECKING:
    from meshguard.wireguard.keypair import Keypair
    from meshguard.wireguard.peer import Peer

__all__ = [
    "BAD_AUTH",
    "BAD_INNER",
    "DROP_REASONS",
    "HEADER",
    "KEEPALIVE",
    "OK",
    "Aead",
    "OpenResult",
    "accept_batch",
    "inner_destination",
    "inner_packet",
    "open_result",
    "open_transport",
    "seal_batch",
    "seal_transport",
]

# status of one opened transport message (also the C fast path's values)
OK = 0
KEEPALIVE = 1
BAD_AUTH = 2
BAD_INNER = 3

OpenResult = tuple[int, int, bytes | None, bytes | None, int]
"""One opened message: (counter, status, inner packet, inner source address, wire length);
packet and source are set for OK only (packet b"" for KEEPALIVE)."""

DROP_REASONS = ("unknown_index", "replay", "bad_auth", "bad_inner", "bad_source")
"""The Counters drop fields a received transport message can end in."""



class Aead(Protocol):
    """An AEAD keyed with one transport key (TransportCipher.aead: ChaCha20-Poly1305)."""

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...


HEADER = struct.Struct("<IIQ")
_NONCE = struct.Struct("<4xQ")
_U16 = struct.Struct("!H")
_ZEROS = bytes(16)


def inner_packet(plaintext: bytes) -> tuple[bytes, bytes] | None:
    """(packet without padding, raw source address) of a decrypted payload; None if invalid."""
    n = len(plaintext)
    if n == 0:
        return None
    version = plaintext[0] >> 4
    if version == 4 and n >= 20:
        total = _U16.unpack_from(plaintext, 2)[0]
        if total < 20 or total > n:
            return None
        return plaintext[:total], plaintext[12:16]
    if version == 6 and n >= 40:
        total = 40 + _U16.unpack_from(plaintext, 4)[0]
        if total > n:
            return None
        return plaintext[:total], plaintext[8:24]
    return None


def inner_destination(packet: bytes) -> bytes | None:
    """Raw destination address of an IPv4/IPv6 packet; None if it is neither."""
    n = len(packet)
    if n >= 20 and packet[0] >> 4 == 4:
        return packet[16:20]
    if n >= 40 and packet[0] >> 4 == 6:
        return packet[24:40]
    return None


def seal_batch(aead: Aead, receiver: int, first: int,
               packets: Iterable[bytes]) -> list[bytes]:
    """Transport messages for consecutive counters first, first+1, ... (padding to 16)."""
    out: list[bytes] = []
    pack_hdr = HEADER.pack
    pack_nonce = _NONCE.pack
    enc = aead.encrypt
    zeros = _ZEROS
    counter = first
    for pkt in packets:
        pad = -len(pkt) & 15
        if pad:
            pkt = pkt + zeros[:pad]
        out.append(pack_hdr(4, receiver, counter) + enc(pack_nonce(counter), pkt, None))
        counter += 1
    return out


def seal_transport(cipher: TransportCipher, receiver: int, counter: int, packet: bytes) -> bytes:
    """One transport message: header then the packet zero-padded to 16 and sealed."""
    return seal_batch(cipher.aead, receiver, counter, (packet,))[0]


def open_transport(cipher: TransportCipher, data: bytes) -> bytes | None:
    """Decrypt a transport message (no replay check); None when it does not authenticate."""
    _, _, counter = HEADER.unpack_from(data)
    return cipher.open_or_none(counter, data[wire.TRANSPORT_HEADER_SIZE :])


def open_result(counter: int, plaintext: bytes | None, wire_len: int) -> OpenResult:
    """Classify what opening one message gave (None: it did not authenticate)."""
    if plaintext is None:
        return (counter, BAD_AUTH, None, None, wire_len)
    if not plaintext:
        return (counter, KEEPALIVE, b"", None, wire_len)
    inner = inner_packet(plaintext)
    if inner is None:
        return (counter, BAD_INNER, None, None, wire_len)
    return (counter, OK, inner[0], inner[1], wire_len)


def accept_batch(
    kp: Keypair,
    results: Iterable[OpenResult],
    source_allowed: Callable[[Peer, bytes], bool],
    src_ok: dict[tuple[Peer, bytes], bool],
    tun: list[bytes],
    drops: dict[str, int],
) -> tuple[int, int, int]:
    """Apply the receive policy to messages opened under `kp`, in order.

    Packets that pass go to `tun`; refused ones are counted in `drops` (keys: DROP_REASONS).
    `src_ok` caches source checks for the caller's batch (routes may change between
    batches). Returns (authenticated messages, their wire bytes, keepalives among them), the
    arguments of Device.note_received."""
    replay = kp.replay
    accept = replay.accept
    peer = kp.peer
    npk = nbytes = keep = 0
    for counter, status, pkt, inner_src, wire_len in results:
        if status == BAD_AUTH:
            # as if checked before decrypting: a replayed counter counts as a replay
            drops["replay" if not replay.check(counter) else "bad_auth"] += 1
            continue
        if not accept(counter):
            drops["replay"] += 1
            continue
        npk += 1
        nbytes += wire_len
        if status:
            if status == KEEPALIVE:
                keep += 1
            else:
                drops["bad_inner"] += 1
            continue
        assert pkt is not None and inner_src is not None
        key = (peer, inner_src)
        ok = src_ok.get(key)
        if ok is None:
            ok = src_ok[key] = source_allowed(peer, inner_src)
        if ok:
            tun.append(pkt)
        else:
            drops["bad_source"] += 1
    return npk, nbytes, keep
