"""Plain WireGuard devices that reach the mesh through this member (`meshguard export-wg`).

Each device is one file `devices/<name>.peer` in the config dir, 0600 (it holds the preshared
key), written atomically:

    # meshguard export-wg: a plain WireGuard device reaching the mesh through this member
    PublicKey = <base64 X25519 key of the device>
    PresharedKey = <base64>
    Address = 10.98.7.1/32

The device's private key is never stored here: it is in the exported configuration only.
A running daemon adds every device as a WireGuard peer whose allowed IP is its address
(daemon/wg_device_peers.py, docs/policy.md#plain-wireguard-devices).

Addresses: by default the first free host of the subnet inside 10.98.0.0/16 that an org policy
grants this member (`route 10.98.5.0/24 via gw-1`), else of its own device subnet
10.98.X.0/24, where X is the third byte of this member's natural mesh IPv4 (10.99.X.Y), so
the devices of different gateways rarely share a subnet and a policy can grant each gateway its
own: `route 10.98.X.0/24 via <gateway>`. An address inside the mesh prefixes is refused (members'
addresses live there), as is one another device of this member has.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshguard.crypto.keys import X25519PublicKey, b64decode_key, b64encode
from meshguard.errors import ConfigError, MeshguardError
from meshguard.identity import store
from meshguard.identity.addressing import MESH_IPV4_NETWORK, MESH_IPV6_NETWORK, mesh_ipv4
from meshguard.identity.names import validate_label

DEVICES_DIR = "devices"
SUFFIX = ".peer"
LOCK = ".lock"
DEVICE_RANGE = ipaddress.IPv4Network("10.98.0.0/16")
MAX_DEVICE_FILE = 4096
MAX_DEVICES = 1024  # files beyond this are not read (a config dir is not a database)
HEADER = "# meshguard export-wg: a plain WireGuard device reaching the mesh through this member"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class WgDevice:
    name: str
    public_key: bytes  # X25519
    preshared_key: bytes
    address: IPAddress

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The device's allowed IP on the gateway: its address alone (/32 or /128)."""
        return ipaddress.ip_network(self.address)

    def encode(self) -> bytes:
        return (f"{HEADER}\nPublicKey = {b64encode(self.public_key)}\n"
                f"PresharedKey = {b64encode(self.preshared_key)}\n"
                f"Address = {self.network}\n").encode()


def devices_dir(config_dir: Path) -> Path:
    return config_dir / DEVICES_DIR


def device_path(config_dir: Path, name: str) -> Path:
    return devices_dir(config_dir) / f"{validate_label(name, 'device name')}{SUFFIX}"


def device_subnet(identity_key: bytes) -> ipaddress.IPv4Network:
    """This member's default device subnet, 10.98.X.0/24 (X from its mesh IPv4 10.99.X.Y)."""
    x = mesh_ipv4(identity_key).packed[2]
    return ipaddress.IPv4Network(f"10.98.{x}.0/24")


def pick_subnet(identity_key: bytes, granted: Sequence[IPNetwork]) -> ipaddress.IPv4Network:
    """Where a new device's address comes from: the first IPv4 prefix inside the device range
    that a policy grants this member (docs/policy.md#routes), else its default device subnet."""
    for p in granted:
        if isinstance(p, ipaddress.IPv4Network) and p.subnet_of(DEVICE_RANGE):
            return p
    return device_subnet(identity_key)


def parse_device(name: str, data: bytes, where: str) -> WgDevice:
    """One `.peer` file; ConfigError "WHERE:LINE: what is wrong" for anything malformed."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None
    fields: dict[str, tuple[str, int]] = {}
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or key not in ("PublicKey", "PresharedKey", "Address"):
            raise ConfigError(f"{where}:{no}: expected PublicKey, PresharedKey or Address = "
                              "value")
        if key in fields:
            raise ConfigError(f"{where}:{no}: {key} given twice")
        fields[key] = (value, no)
    for key in ("PublicKey", "PresharedKey", "Address"):
        if key not in fields:
            raise ConfigError(f"{where}: no {key} line")
    pub, psk = fields["PublicKey"], fields["PresharedKey"]
    addr_text, addr_no = fields["Address"]
    try:
        pub_raw = X25519PublicKey.from_b64(pub[0]).raw
    except MeshguardError as exc:
        raise ConfigError(f"{where}:{pub[1]}: {exc}") from None
    try:
        psk_raw = b64decode_key(psk[0], what="preshared key")
    except MeshguardError as exc:
        raise ConfigError(f"{where}:{psk[1]}: {exc}") from None
    try:
        net = ipaddress.ip_network(addr_text, strict=True)
    except ValueError:
        raise ConfigError(f"{where}:{addr_no}: bad address {addr_text!r}") from None
    if net.num_addresses != 1:
        raise ConfigError(f"{where}:{addr_no}: a device has one address (/32 or /128), "
                          f"not {net}")
    addr = net.network_address
    check_address(addr, (), f"{where}:{addr_no}: ")
    return WgDevice(name, pub_raw, psk_raw, addr)


def check_address(addr: IPAddress, taken: Iterable[WgDevice], prefix: str = "") -> None:
    """Refuse an address a device cannot have: not unicast, inside the mesh prefixes, or
    another device's."""
    if (addr.is_multicast or addr.is_unspecified or addr.is_loopback or addr.is_link_local
            or (isinstance(addr, ipaddress.IPv4Address) and addr.packed[3] in (0, 255))):
        raise ConfigError(f"{prefix}{addr} cannot be a device address; pick a unicast "
                          f"address such as one in {DEVICE_RANGE}")
    if addr in MESH_IPV4_NETWORK or addr in MESH_IPV6_NETWORK:
        net = MESH_IPV4_NETWORK if addr.version == 4 else MESH_IPV6_NETWORK
        raise ConfigError(f"{prefix}{addr} is inside the mesh prefix {net}, where members' "
                          f"addresses are; pick one outside it, such as one in {DEVICE_RANGE}")
    for d in taken:
        if d.address == addr:
            raise ConfigError(f"{prefix}{addr} is taken by device {d.name}; pick another or "
                              f"remove it with `meshguard export-wg --remove {d.name}`")


def allocate_address(subnet: ipaddress.IPv4Network, taken: Sequence[WgDevice]
                     ) -> ipaddress.IPv4Address:
    """The first host of `subnet` that no device has (.0 and .255 skipped)."""
    used = {d.address for d in taken}
    for host in subnet.hosts():
        if host not in used and host.packed[3] not in (0, 255):
            return host
    raise ConfigError(f"every address of {subnet} is taken by a device; remove one with "
                      "`meshguard export-wg --remove NAME` or give --address")


def load_devices(config_dir: Path) -> tuple[list[WgDevice], list[str]]:
    """Every readable device, by name; and one line per file that was skipped."""
    directory = devices_dir(config_dir)
    try:
        paths = sorted(p for p in directory.iterdir() if p.name.endswith(SUFFIX))
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        return [], [f"cannot read {directory}: {exc.strerror or exc}"]
    devices: list[WgDevice] = []
    problems: list[str] = []
    if len(paths) > MAX_DEVICES:
        problems.append(f"{directory}: more than {MAX_DEVICES} devices; the rest are ignored")
        paths = paths[:MAX_DEVICES]
    seen_keys: dict[bytes, str] = {}
    seen_addrs: dict[IPAddress, str] = {}
    for p in paths:
        name = p.name[: -len(SUFFIX)]
        try:
            validate_label(name, "device name")
            if p.is_symlink() or not p.is_file():
                raise ConfigError(f"{p}: not a regular file")
            if p.stat().st_size > MAX_DEVICE_FILE:
                raise ConfigError(f"{p}: larger than {MAX_DEVICE_FILE} bytes")
            dev = parse_device(name, p.read_bytes(), str(p))
        except (MeshguardError, OSError) as exc:
            problems.append(f"{exc}; device skipped" if isinstance(exc, MeshguardError)
                            else f"{p}: {exc.strerror or exc}; device skipped")
            continue
        if dev.public_key in seen_keys or dev.address in seen_addrs:
            other = seen_keys.get(dev.public_key) or seen_addrs[dev.address]
            problems.append(f"{p}: same key or address as device {other}; device skipped")
            continue
        seen_keys[dev.public_key] = seen_addrs[dev.address] = name
        devices.append(dev)
    return devices, problems


def add_device(config_dir: Path, name: str, public_key: bytes, preshared_key: bytes,
               identity_key: bytes, address: IPAddress | None = None,
               granted: Sequence[IPNetwork] = ()) -> WgDevice:
    """Store a new device (atomic, 0600) with `address` or the first free one of this
    member's device subnet (`pick_subnet`); refuses a name or an address that is taken."""
    path = device_path(config_dir, name)
    if address is not None:
        check_address(address, ())  # before anything is created
    store.ensure_dir(config_dir)
    store.ensure_dir(path.parent)
    with store.locked(path.parent / LOCK):
        devices, _ = load_devices(config_dir)
        if path.exists():
            raise ConfigError(f"device {name} exists ({path}); remove it first with "
                              f"`meshguard export-wg --remove {name}`")
        if address is None:
            address = allocate_address(pick_subnet(identity_key, granted), devices)
        else:
            check_address(address, devices)
        dev = WgDevice(name, public_key, preshared_key, address)
        store.write_file(path, dev.encode(), store.SECRET_MODE)
    return dev


def remove_device(config_dir: Path, name: str) -> None:
    path = device_path(config_dir, name)
    if not path.exists():
        known = ", ".join(d.name for d in load_devices(config_dir)[0]) or "none"
        raise ConfigError(f"no device {name} in {path.parent} (devices: {known})")
    with store.locked(path.parent / LOCK):
        store.remove_file(path)
