"""What a node advertises by mDNS and what it keeps of others' advertisements
(discovery/mdns_info.py): the instance name and TXT, and hostile advertisements bounded."""

from __future__ import annotations

import base64

from meshguard.discovery.mdns_info import (
    MAX_PEERS,
    SERVICE_TYPE,
    MdnsPeer,
    MdnsPeers,
    instance_name,
    parse_service,
    service_properties,
)
from meshguard.discovery.txt_records import parse_meshguard_txt

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


def test_service_info_carries_the_original_record_and_the_key() -> None:
    assert SERVICE_TYPE == "_meshguard._udp.local."
    props = service_properties(KEY, [("fd00::1", 51821), ("10.210.0.1", 51821)])
    assert props["key"] == base64.b64encode(KEY).decode()
    # the TXT string is the one the original Zig meshguard parses
    assert parse_meshguard_txt(f"meshguard={props['meshguard']}").endpoint == ("10.210.0.1",
                                                                              51821)
    assert "meshguard" not in service_properties(KEY, [("fd00::1", 51821)])


def test_instance_names() -> None:
    assert instance_name(None, KEY) == "meshguard-000102030405"
    assert instance_name("db-1", KEY) == "db-1-000102030405"
    long = instance_name("x" * 80, KEY)
    assert len(long) <= 63 and long.endswith("-000102030405")


def test_parse_service_prefers_the_record_then_the_addresses() -> None:
    props = {b"key": base64.b64encode(OTHER), b"meshguard": b"10.210.0.2:51821"}
    got = parse_service("a", props, ["10.210.0.9"], 4000)
    assert isinstance(got, MdnsPeer)
    assert got.endpoint == ("10.210.0.2", 51821) and got.identity_key == OTHER
    got = parse_service("a", {}, ["127.0.0.1", "10.99.1.2", "10.210.0.9"], 4000)
    assert isinstance(got, MdnsPeer) and got.endpoint == ("10.210.0.9", 4000)


def test_hostile_advertisements_are_dropped() -> None:
    assert parse_service("a", {b"key": b"!!"}, ["10.0.0.1"], 1) == "bad key"
    assert parse_service("a", {b"key": base64.b64encode(b"short")}, ["10.0.0.1"], 1) == "bad key"
    for addrs, port in [([], 51821), (["224.0.0.251"], 51821), (["0.0.0.0"], 51821),
                        (["10.0.0.1"], 0), (["not an ip"], 51821)]:
        assert parse_service("a", {b"meshguard": b"garbage"}, addrs, port) == "no usable address"


def test_peers_table_is_bounded_and_skips_this_node() -> None:
    table = MdnsPeers(KEY, [("10.210.0.1", 51821)])
    assert not table.add(MdnsPeer("me", ("10.210.0.5", 1), KEY), "me")  # our own key
    assert not table.add(MdnsPeer("me2", ("10.210.0.1", 51821), None), "me2")  # our endpoint
    for i in range(100):
        table.add(MdnsPeer(f"n{i}", (f"10.1.{i}.1", 51821), None), f"n{i}")
    assert len(table) == MAX_PEERS
    assert table.counters["mdns_full"] == 100 - MAX_PEERS
    assert table.remove("n0") and not table.remove("n0")
    assert table.add(MdnsPeer("late", ("10.2.0.1", 51821), None), "late")
    assert len(table.endpoints()) == MAX_PEERS
    # an advertisement that turns bad drops what it had offered
    assert table.add("no usable address", "late")
    assert ("10.2.0.1", 51821) not in table.endpoints()
