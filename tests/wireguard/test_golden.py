"""Golden handshake transcript: fixed static keys, ephemerals from SeededRng, fixed clock.

The Noise core is proven against the public vector (test_vector.py); this pins the complete
WireGuard framing on top of it (indices, TAI64N, mac1, the response, the first transport
message and a cookie reply), so any change to the bytes on the wire is noticed. The file
golden_handshake.json was produced by this code and checked for self-consistency below; the
test never writes it. After an intended change to the wire bytes, rewrite it on purpose with
`.venv/bin/python -m tests.wireguard.test_golden` and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

from meshguard.crypto.aead import TransportCipher
from meshguard.crypto.keys import X25519PrivateKey
from meshguard.crypto.tai64n import parse_tai64n, tai64n
from meshguard.testing.rng import SeededRng
from meshguard.wire import wireguard as w
from meshguard.wireguard import noise
from meshguard.wireguard.cookie import CookieChecker, CookieGenerator
from meshguard.wireguard.device import seal_transport

from .sim import A_IP, B_IP, ipv4_packet

GOLDEN = Path(__file__).with_name("golden_handshake.json")
WALL = 1_700_000_000.5


def _transcript() -> dict[str, str]:
    i_static = X25519PrivateKey(bytes(range(1, 33)))
    r_static = X25519PrivateKey(bytes(range(101, 133)))
    rng_i, rng_r = SeededRng(1), SeededRng(2)
    i_eph = X25519PrivateKey.generate(rng_i.bytes(32))
    r_eph = X25519PrivateKey.generate(rng_r.bytes(32))
    ts = tai64n(WALL)
    body, istate = noise.create_initiation(i_static, r_static.public_key.raw, i_eph, ts)
    sender_i, sender_r = 0x11223344, 0x55667788
    init = w.Initiation(sender_i, body.ephemeral, body.encrypted_static, body.encrypted_payload)
    gen_i = CookieGenerator(r_static.public_key.raw)
    init_bytes = gen_i.add_macs(0.0, init.encode(), w.INITIATION_MAC1_OFFSET)

    rstate = noise.consume_initiation(r_static, body)
    assert rstate.remote_static == i_static.public_key.raw and rstate.payload == ts
    rbody, r_session = noise.create_response(rstate, r_eph, bytes(32))
    resp = w.Response(sender_r, sender_i, rbody.ephemeral, rbody.encrypted_payload)
    gen_r = CookieGenerator(i_static.public_key.raw)
    resp_bytes = gen_r.add_macs(0.0, resp.encode(), w.RESPONSE_MAC1_OFFSET)
    i_session = noise.consume_response(istate, i_static, rbody, bytes(32))
    assert i_session.h == r_session.h

    send, _ = i_session.transport_keys(initiator=True)
    packet = ipv4_packet(A_IP, B_IP, b"golden")
    transport = seal_transport(TransportCipher(send), sender_r, 0, packet)

    checker = CookieChecker(SeededRng(3), r_static.public_key.raw)
    reply = checker.make_reply(
        0.0, init_bytes, w.INITIATION_MAC1_OFFSET, sender_i, ("192.0.2.1", 51820)
    )
    return {
        "initiator_public": i_static.public_key.raw.hex(),
        "responder_public": r_static.public_key.raw.hex(),
        "initiation": init_bytes.hex(),
        "response": resp_bytes.hex(),
        "handshake_hash": i_session.h.hex(),
        "transport_0": transport.hex(),
        "cookie_reply": reply.encode().hex(),
    }


def test_golden_transcript() -> None:
    assert _transcript() == json.loads(GOLDEN.read_text())


def test_golden_file_is_self_consistent() -> None:
    """The stored bytes parse, carry valid MACs and decrypt with the stored keys' owner."""
    g = json.loads(GOLDEN.read_text())
    init = bytes.fromhex(g["initiation"])
    resp = bytes.fromhex(g["response"])
    assert len(init) == 148 and len(resp) == 92
    r_static = X25519PrivateKey(bytes(range(101, 133)))
    i_static = X25519PrivateKey(bytes(range(1, 33)))
    assert CookieChecker(SeededRng(0), r_static.public_key.raw).check_mac1(init, 116)
    assert CookieChecker(SeededRng(0), i_static.public_key.raw).check_mac1(resp, 60)
    m = w.parse(init)
    assert isinstance(m, w.Initiation) and m.sender == 0x11223344
    st = noise.consume_initiation(
        r_static, noise.InitiationBody(m.ephemeral, m.encrypted_static, m.encrypted_timestamp)
    )
    assert st.remote_static.hex() == g["initiator_public"]
    assert parse_tai64n(st.payload)[0] == int(WALL)
    r = w.parse(resp)
    assert isinstance(r, w.Response) and r.receiver == m.sender
    t = w.parse(bytes.fromhex(g["transport_0"]))
    assert isinstance(t, w.Transport) and t.receiver == r.sender and t.counter == 0


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(_transcript(), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
