"""devices/NAME.peer: storage, address allocation and what a malformed file gets."""

from __future__ import annotations

import ipaddress
import re
import stat
from pathlib import Path

import pytest

from meshguard.crypto.keys import X25519PrivateKey, b64encode
from meshguard.errors import ConfigError, MeshguardError
from meshguard.identity import wg_devices
from meshguard.identity.addressing import mesh_ipv4
from meshguard.testing.rng import SeededRng

rng = SeededRng(13)
IDENTITY = rng.bytes(32)


def pub() -> bytes:
    return X25519PrivateKey.generate(rng.bytes(32)).public_key.raw


def add(cfg: Path, name: str, address: str | None = None) -> wg_devices.WgDevice:
    addr = ipaddress.ip_address(address) if address is not None else None
    return wg_devices.add_device(cfg, name, pub(), rng.bytes(32), IDENTITY, addr)


def test_the_device_subnet_follows_the_mesh_address() -> None:
    x = mesh_ipv4(IDENTITY).packed[2]
    assert wg_devices.device_subnet(IDENTITY) == ipaddress.IPv4Network(f"10.98.{x}.0/24")


def test_stored_0600_and_read_back(tmp_path: Path) -> None:
    d = add(tmp_path, "phone")
    path = tmp_path / "devices" / "phone.peer"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert f"PublicKey = {b64encode(d.public_key)}" in text
    assert f"PresharedKey = {b64encode(d.preshared_key)}" in text
    devices, problems = wg_devices.load_devices(tmp_path)
    assert devices == [d] and problems == []
    assert d.address == next(wg_devices.device_subnet(IDENTITY).hosts())


def test_addresses_are_allocated_in_order_and_reused_after_removal(tmp_path: Path) -> None:
    sub = wg_devices.device_subnet(IDENTITY)
    hosts = list(sub.hosts())
    a, b = add(tmp_path, "a"), add(tmp_path, "b")
    assert (a.address, b.address) == (hosts[0], hosts[1])
    wg_devices.remove_device(tmp_path, "a")
    assert add(tmp_path, "c").address == hosts[0]
    assert add(tmp_path, "d").address == hosts[2]


def test_a_full_subnet_is_refused(tmp_path: Path) -> None:
    sub = ipaddress.IPv4Network("10.98.1.0/24")
    taken = [wg_devices.WgDevice(f"d{i}", b"", b"", h) for i, h in enumerate(sub.hosts())]
    with pytest.raises(ConfigError, match=re.escape("every address of 10.98.1.0/24 is taken")):
        wg_devices.allocate_address(sub, taken)
    assert wg_devices.allocate_address(sub, taken[:5] + taken[6:]) == taken[5].address


@pytest.mark.parametrize(("address", "why"), [
    ("10.99.3.4", "inside the mesh prefix 10.99.0.0/16"),
    ("fd99:6d67::5", "inside the mesh prefix fd99:6d67::/64"),
    ("224.0.0.5", "cannot be a device address"),
    ("127.0.0.1", "cannot be a device address"),
    ("10.98.1.255", "cannot be a device address"),
])
def test_unusable_addresses_are_refused(tmp_path: Path, address: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        add(tmp_path, "x", address)
    assert not (tmp_path / "devices" / "x.peer").exists()


def test_a_taken_address_or_name_is_refused(tmp_path: Path) -> None:
    add(tmp_path, "phone", "10.98.200.7")
    with pytest.raises(ConfigError, match=re.escape("10.98.200.7 is taken by device phone")):
        add(tmp_path, "tablet", "10.98.200.7")
    with pytest.raises(ConfigError, match="device phone exists"):
        add(tmp_path, "phone")
    assert [d.name for d in wg_devices.load_devices(tmp_path)[0]] == ["phone"]


def test_an_ipv6_address_is_a_128(tmp_path: Path) -> None:
    d = add(tmp_path, "v6", "fd98::7")
    assert str(d.network) == "fd98::7/128"
    assert wg_devices.load_devices(tmp_path)[0] == [d]


def test_unsafe_names_are_refused(tmp_path: Path) -> None:
    for name in ("../x", "a b", "-x", ""):
        with pytest.raises(MeshguardError, match="not a DNS label"):
            add(tmp_path, name)


def test_removing_an_unknown_device_names_the_known_ones(tmp_path: Path) -> None:
    add(tmp_path, "phone")
    with pytest.raises(ConfigError, match=r"no device tab .*\(devices: phone\)"):
        wg_devices.remove_device(tmp_path, "tab")


GOOD = ("PublicKey = {pub}\nPresharedKey = {psk}\nAddress = 10.98.4.2/32\n")


@pytest.mark.parametrize(("text", "why"), [
    ("PublicKey = {pub}\nAddress = 10.98.4.2/32\n", "no PresharedKey line"),
    (GOOD + "Endpoint = 1.2.3.4:5\n", ":4: expected PublicKey"),
    (GOOD + "Address = 10.98.4.3/32\n", ":4: Address given twice"),
    (GOOD.replace("/32", "/24").replace("4.2", "4.0"), ":3: a device has one address"),
    (GOOD.replace("10.98.4.2", "10.99.4.2"), ":3: 10.99.4.2 is inside the mesh prefix"),
    (GOOD.replace("{pub}", "AAAA"), ":1:"),
    (GOOD.replace("10.98.4.2/32", "nonsense"), ":3: bad address"),
])
def test_malformed_files_are_skipped_with_one_line_each(tmp_path: Path, text: str,
                                                        why: str) -> None:
    good = add(tmp_path, "good")
    bad = tmp_path / "devices" / "bad.peer"
    bad.write_text(text.format(pub=b64encode(pub()), psk=b64encode(rng.bytes(32))))
    devices, problems = wg_devices.load_devices(tmp_path)
    assert devices == [good]
    assert len(problems) == 1 and f"{bad}" in problems[0] and why in problems[0], problems


def test_two_files_with_one_key_or_address_keep_the_first(tmp_path: Path) -> None:
    a = add(tmp_path, "a")
    (tmp_path / "devices" / "b.peer").write_bytes(a.encode())
    devices, problems = wg_devices.load_devices(tmp_path)
    assert devices == [a]
    assert len(problems) == 1 and "same key or address as device a" in problems[0]


def test_no_devices_directory_is_no_devices(tmp_path: Path) -> None:
    assert wg_devices.load_devices(tmp_path) == ([], [])
