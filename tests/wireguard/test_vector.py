"""The cacophony Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s vector through the WireGuard Noise core."""

from __future__ import annotations

import json
from pathlib import Path

from meshguard.crypto.aead import TransportCipher
from meshguard.crypto.keys import X25519PrivateKey
from meshguard.wireguard import noise

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
VECTOR = VECTORS / "noise-IKpsk2-25519-ChaChaPoly-BLAKE2s.json"


def _load() -> dict[str, object]:
    # Shipped with the tests: a missing file is a broken checkout and must fail, not skip.
    data: dict[str, object] = json.loads(VECTOR.read_text())
    return data


def test_noise_vector_reproduced() -> None:
    v = _load()
    h = bytes.fromhex
    assert v["protocol_name"] == "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
    prologue = h(str(v["init_prologue"]))
    psk = h(str(v["init_psks"][0]))  # type: ignore[index]
    msgs = v["messages"]
    assert isinstance(msgs, list)
    i_static = X25519PrivateKey(h(str(v["init_static"])))
    i_eph = X25519PrivateKey(h(str(v["init_ephemeral"])))
    r_static = X25519PrivateKey(h(str(v["resp_static"])))
    r_eph = X25519PrivateKey(h(str(v["resp_ephemeral"])))
    assert h(str(v["init_remote_static"])) == r_static.public_key.raw

    # message 1: -> e, es, s, ss, {payload}
    body1, istate = noise.create_initiation(
        i_static, r_static.public_key.raw, i_eph, h(msgs[0]["payload"]), prologue=prologue
    )
    wire1 = body1.ephemeral + body1.encrypted_static + body1.encrypted_payload
    assert wire1.hex() == msgs[0]["ciphertext"]
    rstate = noise.consume_initiation(r_static, body1, prologue=prologue)
    assert rstate.remote_static == i_static.public_key.raw
    assert rstate.payload == h(msgs[0]["payload"])

    # message 2: <- e, ee, se, psk, {payload}
    body2, r_session = noise.create_response(rstate, r_eph, psk, h(msgs[1]["payload"]))
    wire2 = body2.ephemeral + body2.encrypted_payload
    assert wire2.hex() == msgs[1]["ciphertext"]
    i_session = noise.consume_response(istate, i_static, body2, psk)
    assert i_session.payload == h(msgs[1]["payload"])
    assert i_session.h.hex() == v["handshake_hash"]
    assert r_session.h == i_session.h

    # transport: initiator sends with the first KDF2 output, counters 0 and 1
    i_send, i_recv = i_session.transport_keys(initiator=True)
    r_send, r_recv = r_session.transport_keys(initiator=False)
    assert (i_send, i_recv) == (r_recv, r_send)
    ci, cr = TransportCipher(i_send), TransportCipher(r_send)
    counters = {"i": 0, "r": 0}
    for n, m in enumerate(msgs[2:]):
        sender = "i" if n % 2 == 0 else "r"
        cipher = ci if sender == "i" else cr
        ct = cipher.seal(counters[sender], h(m["payload"]))
        assert ct.hex() == m["ciphertext"], f"transport message {n + 2}"
        counters[sender] += 1
    assert counters == {"i": 2, "r": 2}
