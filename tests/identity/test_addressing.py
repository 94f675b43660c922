"""Deterministic mesh addresses, org domains and names (docs/compatibility.md)."""

from __future__ import annotations

import ipaddress
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshguard.crypto.hashes import blake3
from meshguard.crypto.keys import Ed25519PrivateKey
from meshguard.identity import addressing
from meshguard.identity.addressing import (
    MAX_PROBES,
    assign_ipv4,
    mesh_ipv4,
    mesh_ipv6,
    org_domain,
    probe_ipv4,
)
from meshguard.identity.errors import UnsafeNameError
from meshguard.identity.names import is_dns_label, node_dns_name, validate_label

from .helpers import make_key

VEC = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "identity.json").read_text())


def test_spec_known_answers() -> None:
    key = Ed25519PrivateKey(bytes.fromhex(VEC["seed"]))
    pub = key.public_key.raw
    assert key.public_key.b64() == VEC["public_key_b64"]
    assert blake3(pub)[:8].hex() == VEC["blake3_pub_prefix8"]
    assert str(mesh_ipv4(pub)) == VEC["mesh_ipv4"]
    assert mesh_ipv6(pub) == ipaddress.IPv6Address(VEC["mesh_ipv6"])
    assert org_domain(pub) == VEC["org_domain"]
    assert node_dns_name("node-1", org_domain(pub)) == "node-1.98ba85.mesh"


@pytest.mark.parametrize(
    ("h0", "h1", "expected"),
    [
        (0, 0, "10.99.1.1"),
        (0, 255, "10.99.1.254"),
        (7, 255, "10.99.7.254"),
        (255, 254, "10.99.255.254"),
        (12, 34, "10.99.12.34"),
    ],
)
def test_ipv4_fixups(h0: int, h1: int, expected: str) -> None:
    assert str(addressing._ipv4_from_hash(bytes([h0, h1]) + bytes(30))) == expected


def test_ipv6_all_zero_iid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(addressing, "blake3", lambda data: bytes(32))
    assert str(mesh_ipv6(b"x" * 32)) == "fd99:6d67::1"


def test_addresses_are_in_the_mesh_networks() -> None:
    for i in range(50):
        pub = make_key(f"n{i}").public_key.raw
        v4 = mesh_ipv4(pub)
        assert v4 in addressing.MESH_IPV4_NETWORK
        assert v4.packed[2] != 0 and v4.packed[3] not in (0, 255)
        assert mesh_ipv6(pub) in addressing.MESH_IPV6_NETWORK


def _colliding_keys(n: int) -> list[bytes]:
    """n keys sharing one natural IPv4 address, found by search over fixed labels."""
    by_addr: dict[ipaddress.IPv4Address, list[bytes]] = {}
    i = 0
    while True:
        pub = make_key(f"c{i}").public_key.raw
        group = by_addr.setdefault(mesh_ipv4(pub), [])
        group.append(pub)
        if len(group) == n:
            return group
        i += 1


def test_assign_ipv4_without_collisions_is_natural() -> None:
    keys = [make_key(f"m{i}").public_key.raw for i in range(20)]
    if len({mesh_ipv4(k) for k in keys}) != len(keys):
        pytest.skip("fixed keys happen to collide")
    assert assign_ipv4(keys) == {k: mesh_ipv4(k) for k in keys}


def test_assign_ipv4_resolves_collision_deterministically() -> None:
    a, b, c = _colliding_keys(3)
    others = [make_key(f"o{i}").public_key.raw for i in range(10)]
    members = [a, b, c, *others]
    result = assign_ipv4(members)
    # Same answer whatever the order in which members are given.
    assert assign_ipv4(list(reversed(members))) == result
    addrs = [result[k] for k in members]
    assert None not in addrs
    assert len(set(addrs)) == len(members)  # no two members share an address
    lowest = min(a, b, c)
    assert result[lowest] == mesh_ipv4(lowest)  # the lowest key keeps the natural address
    for k in (a, b, c):
        if k != lowest:
            assert result[k] != mesh_ipv4(k)
            assert result[k] in {probe_ipv4(k, i) for i in range(1, MAX_PROBES + 1)}
    # A winner keeps its natural address when unrelated members join.
    more = assign_ipv4([*members, *(make_key(f"x{i}").public_key.raw for i in range(10))])
    assert more[lowest] == result[lowest]


def test_assign_ipv4_probe_never_takes_a_natural_address(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _colliding_keys(2)
    loser = max(a, b)
    third = make_key("third").public_key.raw
    # Make the loser's first probe land on third's natural address: it must skip it.
    real = addressing.probe_ipv4

    def fake(pub: bytes, attempt: int) -> ipaddress.IPv4Address:
        return mesh_ipv4(third) if attempt == 1 else real(pub, attempt)

    monkeypatch.setattr(addressing, "probe_ipv4", fake)
    result = assign_ipv4([a, b, third])
    assert result[third] == mesh_ipv4(third)
    assert result[loser] == real(loser, 2)


def test_assign_ipv4_gives_up_after_max_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _colliding_keys(2)
    monkeypatch.setattr(addressing, "probe_ipv4", lambda pub, attempt: mesh_ipv4(a))
    result = assign_ipv4([a, b])
    assert result[min(a, b)] == mesh_ipv4(a)
    assert result[max(a, b)] is None


@pytest.mark.parametrize("name", ["a", "node-1", "N0DE", "x" * 63, "1abc", "a-b-c"])
def test_valid_labels(name: str) -> None:
    assert validate_label(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "-a", "a-", "a_b", "a.b", "../x", "a/b", ".hidden", "x" * 64, "é", "a b", "a\n", ".."],
)
def test_invalid_labels(name: str) -> None:
    assert not is_dns_label(name)
    with pytest.raises(UnsafeNameError, match="not a DNS label"):
        validate_label(name)


def test_label_length_limit_for_certificates() -> None:
    assert is_dns_label("x" * 32, 32)
    assert not is_dns_label("x" * 33, 32)


_member_sets = st.lists(st.integers(0, 400), min_size=1, max_size=60, unique=True)


@settings(max_examples=60, deadline=None)
@given(ids=_member_sets, seed=st.randoms(use_true_random=False))
def test_assign_ipv4_properties_in_a_crowded_space(ids: list[int], seed: random.Random) -> None:
    """In a space of only 16 addresses (collisions everywhere) the rule still holds."""
    keys = [blake3(i.to_bytes(2, "little")) for i in ids]  # stand-ins: any 32 bytes work
    tiny = lambda h: ipaddress.IPv4Address(bytes((10, 99, 1, 1 + h[0] % 16)))  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(addressing, "_ipv4_from_hash", tiny)
        result = assign_ipv4(keys)
        shuffled = list(keys)
        seed.shuffle(shuffled)
        assert assign_ipv4(shuffled) == result  # order-independent
        given_out = [a for a in result.values() if a is not None]
        assert len(given_out) == len(set(given_out))  # never shared
        assert len(given_out) <= 16
        for k in keys:
            natural = mesh_ipv4(k)
            rivals = [o for o in keys if mesh_ipv4(o) == natural]
            if k == min(rivals):
                assert result[k] == natural  # the lowest key keeps its natural address
            else:
                assert result[k] != natural
