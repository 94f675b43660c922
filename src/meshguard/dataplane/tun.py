"""A Linux TUN device: open (IFF_TUN | IFF_NO_PI), configure (MTU, addresses, up), close.

    tun = TunDevice.open("mg0", mtu=1420)
    tun.add_address("10.99.1.2/16"); tun.add_address("fd99:6d67::1/64"); tun.up()
    n = os.readv(tun.fd, ...) / os.read(tun.fd, 65535) ... tun.close()

The descriptor is non-blocking (read raises BlockingIOError when empty). By default the
interface is attached with IFF_VNET_HDR when the kernel supports it (`vnet_hdr=False` to
refuse): every packet on the fd then carries a 10-byte virtio-net header, which the data
plane's Engine uses for TSO/checksum offloads (it issues TUNSETOFFLOAD itself); `read` and
`write` here strip and add a zero header, so they always deal in plain IP packets.
MTU and link state are set with ioctls, addresses with `ip`, in the caller's network namespace.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import socket
import struct
import subprocess
from pathlib import Path
from types import TracebackType

from meshguard.errors import MeshguardError

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
IFNAMSIZ = 16
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFMTU = 0x8922
IFF_UP = 0x1
TUNGETFEATURES = 0x800454CF
_VNET_HDR_LEN = 10
DEFAULT_MTU = 1420  # WireGuard's default: 1500 - 80 (IPv6 + UDP + WireGuard overhead)


class TunError(MeshguardError):
    """The TUN device could not be created or configured."""


def validate_ifname(name: str) -> None:
    if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or name in (".", ".."):
        raise TunError(f"invalid interface name {name!r} (1-15 characters, no '/')")
    if any(c.isspace() for c in name):
        raise TunError(f"invalid interface name {name!r} (no whitespace)")


def _supports_vnet_hdr(fd: int) -> bool:
    try:
        buf = fcntl.ioctl(fd, TUNGETFEATURES, b"\0" * 4)
    except OSError:
        return False
    return bool(struct.unpack("I", buf)[0] & IFF_VNET_HDR)


def interface_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


class TunDevice:
    """An open TUN interface. `fd` is non-blocking; `close()` removes the interface."""

    def __init__(self, fd: int, name: str, flags: int) -> None:
        self.fd = fd
        self.name = name
        self.flags = flags
        self._index: int | None = None

    @property
    def vnet_hdr(self) -> bool:
        """Packets on the fd carry a virtio-net header."""
        return bool(self.flags & IFF_VNET_HDR)

    @classmethod
    def open(
        cls,
        name: str,
        mtu: int | None = DEFAULT_MTU,
        extra_flags: int = 0,
        exclusive: bool = True,
        vnet_hdr: bool = True,
    ) -> TunDevice:
        """Create interface `name` (must not exist when `exclusive`), set its MTU; not up yet.
        With `vnet_hdr`, IFF_VNET_HDR is asked for when the kernel's TUN driver has it."""
        validate_ifname(name)
        if exclusive and interface_exists(name):
            raise TunError(f"interface {name} already exists")
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise TunError(f"{TUN_PATH} does not exist (load the tun module)") from None
        except PermissionError:
            raise TunError(f"cannot open {TUN_PATH}: permission denied (run as root)") from None
        flags = IFF_TUN | IFF_NO_PI | extra_flags
        if vnet_hdr and _supports_vnet_hdr(fd):
            flags |= IFF_VNET_HDR
        try:
            ifr = struct.pack("16sH22x", name.encode(), flags)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        except OSError as exc:
            os.close(fd)
            if exc.errno == errno.EPERM:
                raise TunError(
                    f"cannot create {name}: operation not permitted (run as root)"
                ) from None
            if exc.errno == errno.EBUSY:
                raise TunError(f"interface {name} is in use") from None
            raise TunError(f"cannot create TUN {name}: {exc.strerror}") from None
        dev = cls(fd, name, flags)
        if mtu is not None:
            try:
                dev.set_mtu(mtu)
            except BaseException:
                dev.close()
                raise
        return dev

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def fileno(self) -> int:
        return self.fd

    @property
    def index(self) -> int:
        if self._index is None:
            try:
                self._index = int(Path(f"/sys/class/net/{self.name}/ifindex").read_text())
            except OSError as exc:
                raise TunError(f"interface {self.name} vanished") from exc
        return self._index

    def _ifreq_ioctl(self, request: int, fmt: str, *values: int) -> bytes:
        ifr = struct.pack(f"16s{fmt}", self.name.encode(), *values)
        ifr += bytes(40 - len(ifr))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                return fcntl.ioctl(s.fileno(), request, ifr)
            except OSError as exc:
                raise TunError(f"cannot configure {self.name}: {exc.strerror}") from None

    def set_mtu(self, mtu: int) -> None:
        if not 576 <= mtu <= 65535:
            raise TunError(f"MTU {mtu} out of range (576-65535)")
        self._ifreq_ioctl(SIOCSIFMTU, "i", mtu)

    def mtu(self) -> int:
        return int(Path(f"/sys/class/net/{self.name}/mtu").read_text())

    def _set_flag(self, flag: int, on: bool) -> None:
        res = self._ifreq_ioctl(SIOCGIFFLAGS, "H", 0)
        (flags,) = struct.unpack_from("H", res, 16)
        flags = flags | flag if on else flags & ~flag
        self._ifreq_ioctl(SIOCSIFFLAGS, "H", flags)

    def up(self) -> None:
        self._set_flag(IFF_UP, True)

    def down(self) -> None:
        self._set_flag(IFF_UP, False)

    def add_address(self, cidr: str) -> None:
        """Add an IPv4 or IPv6 interface address ("10.0.0.1/24"); IPv6 without DAD.

        Uses `ip` (iproute2), which works from inside a running event loop.
        """
        iface = ipaddress.ip_interface(cidr)
        argv = ["ip", "addr", "add", str(iface), "dev", self.name]
        if iface.version == 6:
            argv.append("nodad")
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        if res.returncode != 0:
            raise TunError(f"cannot add address {cidr} to {self.name}: {res.stderr.strip()}")

    def read(self, bufsize: int = 65535) -> bytes | None:
        """One packet (without a virtio-net header), or None when none is waiting."""
        try:
            if self.vnet_hdr:
                return os.read(self.fd, bufsize + _VNET_HDR_LEN)[_VNET_HDR_LEN:]
            return os.read(self.fd, bufsize)
        except BlockingIOError:
            return None

    def write(self, packet: bytes) -> int:
        """Write one plain IP packet; returns its length."""
        if self.vnet_hdr:
            return os.write(self.fd, bytes(_VNET_HDR_LEN) + packet) - _VNET_HDR_LEN
        return os.write(self.fd, packet)

    def close(self) -> None:
        """Close the descriptor; the kernel deletes the (non-persistent) interface."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


__all__ = [
    "DEFAULT_MTU",
    "IFF_NO_PI",
    "IFF_TUN",
    "IFF_VNET_HDR",
    "TunDevice",
    "TunError",
    "interface_exists",
    "validate_ifname",
]
