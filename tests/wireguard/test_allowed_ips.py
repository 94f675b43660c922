"""Allowed-IPs trie: longest-prefix match against brute force, removal, both families."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from meshguard.wireguard.allowed_ips import AllowedIPs


def brute(
    routes: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, int], addr: bytes
) -> int | None:
    ip = ipaddress.ip_address(addr)
    best: tuple[int, int] | None = None
    for net, v in routes.items():
        if net.version == ip.version and ip in net and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, v)
    return best[1] if best else None


def test_simple() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    t.insert("0.0.0.0/0", "default")
    t.insert("10.0.0.0/8", "ten")
    t.insert("10.1.0.0/16", "ten-one")
    t.insert("10.1.2.3/32", "host")
    t.insert("::/0", "v6default")
    t.insert("fd00::/8", "ula")
    assert t.lookup(bytes([10, 1, 2, 3])) == "host"
    assert t.lookup(bytes([10, 1, 2, 4])) == "ten-one"
    assert t.lookup(bytes([10, 2, 0, 0])) == "ten"
    assert t.lookup(bytes([11, 0, 0, 0])) == "default"
    assert t.lookup(ipaddress.IPv6Address("fd00::1").packed) == "ula"
    assert t.lookup(ipaddress.IPv6Address("2001::1").packed) == "v6default"
    assert t.lookup(b"\x01\x02") is None
    assert t.exact("10.1.0.0/16") == "ten-one"
    assert t.exact("10.1.0.0/15") is None
    t.insert("10.1.0.0/16", "moved")  # same network: replaced
    assert t.lookup(bytes([10, 1, 9, 9])) == "moved"


def test_remove_value_and_networks_of() -> None:
    t: AllowedIPs[str] = AllowedIPs()
    a, b = "a", "b"
    t.insert("10.0.0.0/8", a)
    t.insert("10.0.0.0/24", b)
    t.insert("10.0.0.128/25", a)
    t.insert("fd00::/64", b)
    assert sorted(map(str, t.networks_of(a))) == ["10.0.0.0/8", "10.0.0.128/25"]
    t.remove_value(a)
    assert t.lookup(bytes([10, 0, 0, 200])) == b
    assert t.lookup(bytes([10, 9, 0, 0])) is None
    assert t.networks_of(a) == []
    t.remove_value(b)
    assert t.items() == []


v4net = st.builds(
    lambda a, p: ipaddress.IPv4Network((a, p), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
# Concentrate addresses so prefixes overlap.
v4near = st.builds(
    lambda a, p: ipaddress.IPv4Network(((10 << 24) | a, p), strict=False),
    st.integers(0, 2**12 - 1),
    st.integers(8, 32),
)
v6net = st.builds(
    lambda a, p: ipaddress.IPv6Network(((0xFD << 120) | (a << 64), p), strict=False),
    st.integers(0, 2**8 - 1),
    st.integers(0, 128),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.one_of(v4net, v4near, v6net), st.integers(0, 5)), max_size=40),
    st.lists(
        st.one_of(st.integers(0, 2**32 - 1), st.integers(10 << 24, (10 << 24) + 2**12)), max_size=30
    ),
    st.lists(st.integers(0, 2**8 - 1), max_size=10),
    st.integers(0, 5),
)
def test_matches_brute_force(
    routes: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]],
    v4probes: list[int],
    v6probes: list[int],
    removed: int,
) -> None:
    t: AllowedIPs[int] = AllowedIPs()
    model: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, int] = {}
    values = {v: object() for v in range(6)}
    back = {id(o): v for v, o in values.items()}
    for net, v in routes:
        t.insert(net, values[v])  # type: ignore[arg-type]
        model[net] = v
    probes = [p.to_bytes(4, "big") for p in v4probes]
    probes += [((0xFD << 120) | (p << 64) | 1).to_bytes(16, "big") for p in v6probes]
    probes += [n.network_address.packed for n in model] + [
        n.broadcast_address.packed for n in model
    ]

    def check() -> None:
        for addr in probes:
            got = t.lookup(addr)
            assert (back[id(got)] if got is not None else None) == brute(model, addr)

    check()
    t.remove_value(values[removed])  # type: ignore[arg-type]
    model = {n: v for n, v in model.items() if v != removed}
    check()
    assert len(t.items()) == len(model)
