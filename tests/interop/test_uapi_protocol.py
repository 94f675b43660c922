"""UAPI parsing/serialization (sans-IO) and framing, with an in-memory backend."""

from __future__ import annotations

import copy
import ipaddress

import pytest
from uapi_fake import FakeBackend

from meshguard.daemon.uapi_protocol import (
    BadRequest,
    DeviceState,
    GetRequest,
    PeerState,
    ProtocolViolation,
    SetRequest,
    UapiParser,
    parse_endpoint,
    serialize_get,
)
from meshguard.daemon.uapi_server import handle_request

K1, K2, K3 = "11" * 32, "22" * 32, "33" * 32


def one(data: bytes) -> object:
    reqs = UapiParser().feed(data)
    assert len(reqs) == 1, reqs
    return reqs[0]


def test_get_reply_matches_wireguard_go_layout() -> None:
    st = DeviceState(
        private_key=bytes.fromhex(K1),
        listen_port=59629,
        peers=[
            PeerState(
                public_key=bytes.fromhex(K2),
                endpoint=("fd00::1", 5),
                last_handshake_ns=1_700_000_000_123_456_789,
                tx_bytes=10,
                rx_bytes=20,
                persistent_keepalive=25,
                allowed_ips=[
                    ipaddress.ip_network("10.0.0.0/24"),
                    ipaddress.ip_network("fd00::/64"),
                ],
            )
        ],
    )
    assert serialize_get(st).decode() == (
        f"private_key={K1}\nlisten_port=59629\npublic_key={K2}\n"
        f"preshared_key={'00' * 32}\nprotocol_version=1\nendpoint=[fd00::1]:5\n"
        "last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=123456789\n"
        "tx_bytes=10\nrx_bytes=20\npersistent_keepalive_interval=25\n"
        "allowed_ip=10.0.0.0/24\nallowed_ip=fd00::/64\nerrno=0\n\n"
    )
    assert serialize_get(DeviceState()) == b"errno=0\n\n"


def test_full_set_parses() -> None:
    req = one(
        (
            f"set=1\nprivate_key={K1}\nlisten_port=1234\nfwmark=7\nreplace_peers=true\n"
            f"public_key={K2}\npreshared_key={K3}\nendpoint=[fe80::1%eth0]:51820\n"
            "persistent_keepalive_interval=25\nreplace_allowed_ips=true\n"
            "allowed_ip=10.1.2.3/24\nallowed_ip=::/0\nprotocol_version=1\n"
            f"public_key={K3}\nremove=true\npublic_key={K1}\nupdate_only=true\n"
            "endpoint=1.2.3.4:5\n\n"
        ).encode()
    )
    assert isinstance(req, SetRequest)
    assert req.private_key == bytes.fromhex(K1) and req.private_key_given
    assert (req.listen_port, req.fwmark, req.replace_peers) == (1234, 7, True)
    p0, p1, p2 = req.peers
    assert p0.preshared_key == bytes.fromhex(K3)
    assert p0.endpoint == ("fe80::1%eth0", 51820)
    assert p0.persistent_keepalive == 25 and p0.replace_allowed_ips
    assert [str(n) for n in p0.allowed_ips] == ["10.1.2.0/24", "::/0"]
    assert p1.remove and not p1.update_only
    assert p2.update_only and p2.endpoint == ("1.2.3.4", 5)


def test_zero_private_key_removes_it() -> None:
    req = one(f"set=1\nprivate_key={'00' * 32}\n\n".encode())
    assert isinstance(req, SetRequest) and req.private_key_given and req.private_key is None


@pytest.mark.parametrize(
    "body",
    [
        "bogus=1",
        "listen_port=abc",
        "listen_port=65536",
        "listen_port=-1",
        "fwmark=4294967296",
        f"private_key={K1[:-2]}",
        f"private_key={K1[:-2]}zz",
        "replace_peers=yes",
        "endpoint=1.2.3.4:5",  # peer key before any public_key
        f"public_key={K2}\nlisten_port=5",  # device key inside a peer section
        f"public_key={K2}\nendpoint=1.2.3.4",
        f"public_key={K2}\nendpoint=[::1:5",
        f"public_key={K2}\nendpoint=example.com:5",
        f"public_key={K2}\nendpoint=1.2.3.4:0",
        f"public_key={K2}\nallowed_ip=10.0.0.1",
        f"public_key={K2}\nallowed_ip=10.0.0.1/33",
        f"public_key={K2}\nallowed_ip=fd00::/129",
        f"public_key={K2}\nprotocol_version=2",
        f"public_key={K2}\nremove=false",
        f"public_key={K2}\npersistent_keepalive_interval=70000",
        "no equals sign",
        "listen_port=1\xe9",
    ],
)
def test_malformed_set_changes_nothing(body: str) -> None:
    be = FakeBackend()
    good = f"set=1\nprivate_key={K1}\npublic_key={K3}\nallowed_ip=10.9.0.0/16\n\n"
    assert handle_request(be, one(good.encode())) == b"errno=0\n\n"  # type: ignore[arg-type]
    before = copy.deepcopy(be.state)
    # valid lines first, the bad one last: the valid ones must not be applied either
    req = one(f"set=1\nlisten_port=4242\nreplace_peers=true\n{body}\n\n".encode("latin-1"))
    assert isinstance(req, BadRequest) and req.errno == 22
    assert handle_request(be, req) == b"errno=-22\n\n"
    assert be.state == before and be.sets == 1


def test_backend_refusal_is_reported() -> None:
    be = FakeBackend()
    be.busy_ports.add(999)
    reply = handle_request(be, one(b"set=1\nlisten_port=999\n\n"))  # type: ignore[arg-type]
    assert reply == b"errno=-98\n\n" and be.state.listen_port == 51820


def test_set_semantics_through_fake_backend() -> None:
    be = FakeBackend()
    p = UapiParser()
    stream = (
        f"set=1\npublic_key={K2}\nallowed_ip=10.0.0.0/8\n\n"
        f"set=1\npublic_key={K2}\nreplace_allowed_ips=true\nallowed_ip=10.1.0.0/16\n"
        f"public_key={K3}\nupdate_only=true\nendpoint=1.1.1.1:1\n\n"
        "get=1\n\n"
    ).encode()
    replies = [handle_request(be, r) for r in p.feed(stream)]  # type: ignore[arg-type]
    assert replies[:2] == [b"errno=0\n\n"] * 2
    text = replies[2].decode()
    assert f"public_key={K2}" in text and "allowed_ip=10.1.0.0/16" in text
    assert "10.0.0.0/8" not in text and K3 not in text  # update_only did not create K3
    assert text.endswith("errno=0\n\n")


def test_framing_split_anywhere_and_pipelined() -> None:
    stream = b"get=1\n\nset=1\nlisten_port=5\n\nget=1\n\n"
    for step in (1, 2, 3, 7, len(stream)):
        p = UapiParser()
        reqs: list[object] = []
        for i in range(0, len(stream), step):
            reqs += p.feed(stream[i : i + step])
        assert [type(r).__name__ for r in reqs] == ["GetRequest", "SetRequest", "GetRequest"]


def test_get_with_keys_is_einval_and_bad_op_closes() -> None:
    assert isinstance(one(b"get=1\nfoo=1\n\n"), BadRequest)
    p = UapiParser()
    out = p.feed(b"get=2\n\nget=1\n\n")
    assert len(out) == 1 and isinstance(out[0], ProtocolViolation) and p.dead
    assert p.feed(b"get=1\n\n") == []
    assert isinstance(UapiParser().feed(b"x" * 5000)[0], ProtocolViolation)
    assert isinstance(one(b"get=1\n\n"), GetRequest)


def test_endpoint_forms() -> None:
    assert parse_endpoint("[::1]:51820") == ("::1", 51820)
    assert parse_endpoint("192.0.2.1:65535") == ("192.0.2.1", 65535)
