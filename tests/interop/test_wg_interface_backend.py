"""WireGuardInterface as a UAPI backend over the real Device (no TUN, no root needed)."""

from __future__ import annotations

import socket

import pytest

from meshguard.daemon.uapi_protocol import UapiParser, serialize_get
from meshguard.daemon.uapi_server import handle_request
from meshguard.daemon.wg_interface import WireGuardInterface
from meshguard.dataplane.engine import Engine
from meshguard.testing.rng import SeededRng

PRIV = "a8" * 31 + "40"
K1, K2 = "11" * 32, "22" * 32


def uapi(iface: WireGuardInterface, text: str) -> str:
    (req,) = UapiParser().feed(text.encode())
    return handle_request(iface, req).decode()  # type: ignore[arg-type]


@pytest.fixture
def iface() -> WireGuardInterface:
    return WireGuardInterface("mgunit0", rng=SeededRng(3), env={})


def test_set_then_get(iface: WireGuardInterface) -> None:
    assert uapi(iface, "get=1\n\n") == "errno=0\n\n"
    r = uapi(
        iface,
        f"set=1\nprivate_key={PRIV}\nfwmark=5\n"
        f"public_key={K1}\npreshared_key={K2}\nendpoint=[fd00::1]:51820\n"
        "persistent_keepalive_interval=0\nallowed_ip=fd01::/64\nallowed_ip=10.1.0.0/16\n"
        f"public_key={K2}\nallowed_ip=10.2.0.0/16\n\n",
    )
    assert r == "errno=0\n\n"
    got = uapi(iface, "get=1\n\n")
    assert got.startswith(f"private_key={PRIV}\nfwmark=5\npublic_key={K1}\npreshared_key={K2}\n")
    # configured order, not grouped by family
    assert "allowed_ip=fd01::/64\nallowed_ip=10.1.0.0/16\n" in got
    assert "endpoint=[fd00::1]:51820\n" in got and "last_handshake_time_sec=0\n" in got
    # a network moves to the peer that claims it last
    assert uapi(iface, f"set=1\npublic_key={K2}\nallowed_ip=10.1.0.0/16\n\n") == "errno=0\n\n"
    got = uapi(iface, "get=1\n\n")
    k1_part, k2_part = got.split(f"public_key={K2}")
    assert "10.1.0.0/16" not in k1_part and "10.1.0.0/16" in k2_part
    # update_only for an unknown peer creates nothing; remove and replace_allowed_ips work
    k3 = "33" * 32
    r = uapi(
        iface,
        f"set=1\npublic_key={k3}\nupdate_only=true\nendpoint=1.2.3.4:5\n"
        f"public_key={K1}\nreplace_allowed_ips=true\nallowed_ip=10.9.0.0/24\n"
        f"public_key={K2}\nremove=true\n\n",
    )
    assert r == "errno=0\n\n"
    got = uapi(iface, "get=1\n\n")
    assert k3 not in got and K2 not in got.replace(f"preshared_key={K2}", "")
    assert "allowed_ip=10.9.0.0/24\n" in got and "fd01::/64" not in got
    assert uapi(iface, "set=1\nreplace_peers=true\n\n") == "errno=0\n\n"
    assert "public_key" not in uapi(iface, "get=1\n\n")


def test_own_key_as_peer_is_ignored(iface: WireGuardInterface) -> None:
    assert uapi(iface, f"set=1\nprivate_key={PRIV}\n\n") == "errno=0\n\n"
    own = iface.device.public_key
    assert own is not None
    assert uapi(iface, f"set=1\npublic_key={own.raw.hex()}\n\n") == "errno=0\n\n"
    assert iface.device.peers == []


def test_busy_port_refuses_the_whole_transaction(iface: WireGuardInterface) -> None:
    busy = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    busy.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    busy.bind(("::", 0))
    port = busy.getsockname()[1]
    engine = Engine(iface.device, -1)
    engine.bind(0)
    iface.backend.engine = engine
    try:
        before = serialize_get(iface.uapi_get())
        r = uapi(iface, f"set=1\nprivate_key={PRIV}\nlisten_port={port}\npublic_key={K1}\n\n")
        assert r == "errno=-98\n\n"
        assert serialize_get(iface.uapi_get()) == before
        assert f"listen_port={engine.port}\n" in before.decode()
    finally:
        engine.close()
        busy.close()


def test_rekey_knob() -> None:
    from meshguard.daemon.wg_interface import REKEY_ENV, InterfaceError
    from meshguard.wireguard import keypair

    for bad in ("x", "0", "-3"):
        with pytest.raises(InterfaceError, match=REKEY_ENV):
            WireGuardInterface("mgunit1", env={REKEY_ENV: bad})
    iface = WireGuardInterface("mgunit1", env={REKEY_ENV: "2.5"})
    assert iface.device.rekey_after_time == 2.5
    assert keypair.REKEY_AFTER_TIME == 120.0  # an option of this Device, not of the process
