"""The data plane's fast-path ciphers, one per session key, that never outlive the keypair.

The engine opens and seals with the fast path's `Cipher` (dataplane/fastpath.py), keyed once
per TransportCipher of a keypair. `CipherCache` holds each TransportCipher only weakly: when
the device drops a keypair (rekey, ZERO_KEYS after 3 x REJECT_AFTER_TIME, handshake given up,
peer removed), nothing else refers to its ciphers, the entry goes at once, and the fast-path
Cipher with its OpenSSL context (freed with OPENSSL_clear_free) goes with it. So the data
plane keeps no copy of a session key the protocol has zeroed, and a packet under such a key
can only meet the device's index table, which no longer knows it.
"""

from __future__ import annotations

import weakref

from meshguard.crypto.aead import TransportCipher
from meshguard.dataplane import fastpath
from meshguard.dataplane.fastpath import FastCipher


class CipherCache:
    """TransportCipher -> fast-path Cipher, weak in the TransportCipher."""

    __slots__ = ("_map",)

    def __init__(self) -> None:
        self._map: weakref.WeakKeyDictionary[TransportCipher, FastCipher] = (
            weakref.WeakKeyDictionary())

    def get(self, tc: TransportCipher) -> FastCipher:
        c = self._map.get(tc)
        if c is None:
            c = self._map[tc] = fastpath.Cipher(tc.key)
        return c

    def __len__(self) -> int:
        return len(self._map)

    def clear(self) -> None:
        self._map.clear()
