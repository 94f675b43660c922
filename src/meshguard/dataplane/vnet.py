"""virtio-net header codec and TUN offload setup (IFF_VNET_HDR, TUNSETVNETHDRSZ, TUNSETOFFLOAD).

A TUN device opened with `IFF_VNET_HDR` prefixes every packet read from it and expects every
packet written to it to be prefixed with a 10-byte `struct virtio_net_hdr`:

    u8 flags; u8 gso_type; u16 hdr_len; u16 gso_size; u16 csum_start; u16 csum_offset

The 16-bit fields are in the host's byte order for legacy virtio, which on the little-endian
machines this project targets means little-endian (TUN's default, `TUNSETVNETLE` not needed).

With `TUNSETOFFLOAD` the kernel may hand over TCP super-packets of up to 64 KB (gso_type
TCPV4/TCPV6, segment payload size in gso_size) and packets whose transport checksum is only
partially computed (flags NEEDS_CSUM: the checksum field holds the pseudo-header sum and the
remainder from csum_start must be added). `meshguard.dataplane.offload` does the packet work;
this module only knows the header and the ioctls.

`IFF_VNET_HDR` must be set when the TUN fd is attached (TUNSETIFF), so the TUN opener ORs
`IFF_VNET_HDR` into its flags (or uses `open_tun` here); `enable_offloads` then configures an
already attached fd and reports what the kernel accepted.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from typing import NamedTuple

from meshguard.errors import MeshguardError

VNET_HDR_LEN = 10

# virtio_net_hdr.flags
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
# virtio_net_hdr.gso_type
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_UDP_L4 = 5
VIRTIO_NET_HDR_GSO_ECN = 0x80

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNGETFEATURES = 0x800454CF
TUNGETIFF = 0x800454D2
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNGETVNETHDRSZ = 0x800454D7
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

_HDR = struct.Struct("<BBHHHH")
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name + ifr_flags, padded to 40 bytes

ZERO_HDR = bytes(VNET_HDR_LEN)
"""The header of a plain packet: no GSO, checksum complete (or for the kernel to verify)."""


class TunOffloadError(MeshguardError):
    """The TUN fd cannot be configured for virtio-net headers."""


class VirtioNetHdr(NamedTuple):
    flags: int = 0
    gso_type: int = VIRTIO_NET_HDR_GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        return _HDR.pack(*self)

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview, offset: int = 0) -> VirtioNetHdr:
        """Parse the header at `offset`; raises struct.error when fewer than 10 bytes remain."""
        return cls._make(_HDR.unpack_from(buf, offset))

    @property
    def needs_csum(self) -> bool:
        return bool(self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM)

    @property
    def gso(self) -> int:
        """gso_type without the ECN bit."""
        return self.gso_type & ~VIRTIO_NET_HDR_GSO_ECN


def pack_hdr(
    flags: int, gso_type: int, hdr_len: int, gso_size: int, csum_start: int, csum_offset: int
) -> bytes:
    """Pack a header without building a VirtioNetHdr (hot path)."""
    return _HDR.pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


unpack_hdr_from = _HDR.unpack_from
"""unpack_hdr_from(buf, offset=0) -> the six header fields as a tuple (hot path)."""


DEFAULT_OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6


@dataclass(frozen=True, slots=True)
class OffloadState:
    """What the kernel accepted for one TUN fd."""

    vnet_hdr: bool
    offloads: int  # TUN_F_* bits accepted by TUNSETOFFLOAD (0 when none)

    @property
    def csum(self) -> bool:
        return bool(self.offloads & TUN_F_CSUM)

    @property
    def tso(self) -> bool:
        return bool(self.offloads & (TUN_F_TSO4 | TUN_F_TSO6))

    @property
    def uso(self) -> bool:
        return bool(self.offloads & (TUN_F_USO4 | TUN_F_USO6))


def tun_features(fd: int) -> int:
    """The IFF_* flags this kernel's TUN driver supports (TUNGETFEATURES)."""
    buf = fcntl.ioctl(fd, TUNGETFEATURES, b"\0" * 4)
    return int(struct.unpack("I", buf)[0])


def tun_flags(fd: int) -> int:
    """The IFF_* flags of an attached TUN fd (TUNGETIFF)."""
    buf = fcntl.ioctl(fd, TUNGETIFF, bytes(_IFREQ.size))
    return int(_IFREQ.unpack(buf)[1])


def _offload_candidates(want: int) -> list[int]:
    """Offload sets to try, best first; TSO/USO are meaningless without TUN_F_CSUM."""
    if not want & TUN_F_CSUM:
        return [0]
    out: list[int] = []
    for mask in (
        want,
        want & ~(TUN_F_USO4 | TUN_F_USO6),
        want & ~(TUN_F_USO4 | TUN_F_USO6 | TUN_F_TSO_ECN),
        TUN_F_CSUM,
        0,
    ):
        if mask not in out:
            out.append(mask)
    return out


def enable_offloads(fd: int, want: int = DEFAULT_OFFLOADS) -> OffloadState:
    """Configure an attached TUN fd for virtio-net headers and the offloads in `want`.

    Tries `want`, then without USO, then checksum offload only, and returns what the kernel
    accepted. When the fd was attached without IFF_VNET_HDR, nothing is changed and
    OffloadState(vnet_hdr=False, offloads=0) is returned: read and write plain packets then.
    A fd that has IFF_VNET_HDR keeps it even when TUNSETOFFLOAD fails (offloads=0): every read
    and write still carries the 10-byte header (reads get zero headers).
    """
    try:
        flags = tun_flags(fd)
    except OSError as exc:
        raise TunOffloadError(f"fd {fd} is not an attached TUN device: {exc.strerror}") from None
    if not flags & IFF_VNET_HDR:
        return OffloadState(vnet_hdr=False, offloads=0)
    try:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
    except OSError as exc:
        raise TunOffloadError(f"TUNSETVNETHDRSZ failed: {exc.strerror}") from None
    for mask in _offload_candidates(want):
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, mask)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                continue
            raise TunOffloadError(f"TUNSETOFFLOAD failed: {exc.strerror}") from None
        return OffloadState(vnet_hdr=True, offloads=mask)
    return OffloadState(vnet_hdr=True, offloads=0)


def open_tun(name: str, vnet_hdr: bool = True) -> int:
    """Open /dev/net/tun and attach it to TUN interface `name` (IFF_TUN | IFF_NO_PI, and
    IFF_VNET_HDR when asked and supported). Returns the fd (blocking; the caller decides).

    A convenience for tests and benchmarks; the data plane's own opener may OR IFF_VNET_HDR
    into its TUNSETIFF flags instead and then call `enable_offloads`.
    """
    if not 0 < len(name.encode()) < 16:
        raise TunOffloadError(f"bad interface name {name!r}")
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise TunOffloadError(f"cannot open /dev/net/tun: {exc.strerror}") from None
    try:
        flags = IFF_TUN | IFF_NO_PI
        if vnet_hdr and tun_features(fd) & IFF_VNET_HDR:
            flags |= IFF_VNET_HDR
        fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), flags))
    except OSError as exc:
        os.close(fd)
        raise TunOffloadError(f"TUNSETIFF {name}: {exc.strerror}") from None
    return fd


@dataclass(slots=True)
class VnetIoStats:
    reads: int = 0
    gso_reads: int = 0  # reads that carried a super-packet
    packets_in: int = 0  # IP packets after segmentation
    bad_reads: int = 0  # malformed virtio-net header or packet (dropped)
    writes: int = 0
    gso_writes: int = 0
    packets_out: int = 0
    write_errors: int = 0  # EAGAIN, EINVAL, EIO... (the packet is dropped)


class VnetTunIO:
    """Batched reads and writes on a non-blocking TUN fd configured by `enable_offloads`.

    `read_batch()` drains up to `max_reads` reads (until EAGAIN) and returns plain IP packets:
    super-packets split, partial checksums completed. `write_batch(packets)` coalesces TCP
    segments into GSO writes and writes everything else as is. Without a virtio-net header
    (state.vnet_hdr False) both degrade to one plain packet per syscall. Errors are counted in
    `stats`, never raised (except a closed fd: EBADF propagates).
    """

    __slots__ = ("_buf", "_mv", "fd", "state", "stats", "verify")

    def __init__(self, fd: int, state: OffloadState, verify: bool = True) -> None:
        self.fd = fd
        self.state = state
        self.verify = verify
        self.stats = VnetIoStats()
        self._buf = bytearray(65536 + VNET_HDR_LEN)
        self._mv = memoryview(self._buf)

    def read_batch(self, max_reads: int = 64) -> list[bytes]:
        from meshguard.dataplane.offload import OffloadError, split_tun_read

        out: list[bytes] = []
        st = self.stats
        fd, buf, mv = self.fd, self._buf, self._mv
        vnet = self.state.vnet_hdr
        for _ in range(max_reads):
            try:
                n = os.readv(fd, [buf])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    raise
                st.bad_reads += 1
                break
            st.reads += 1
            if not vnet:
                out.append(bytes(mv[:n]))
                continue
            if n > VNET_HDR_LEN and buf[1]:
                st.gso_reads += 1
            try:
                pkts = split_tun_read(mv[:n])
            except (OffloadError, struct.error):
                st.bad_reads += 1
                continue
            out.extend(pkts)
        st.packets_in += len(out)
        return out

    def write_batch(self, packets: list[bytes]) -> int:
        """Write `packets` (plain IP packets); returns the number of write syscalls."""
        from meshguard.dataplane.offload import coalesce

        st = self.stats
        st.packets_out += len(packets)
        bufs = coalesce(packets, verify=self.verify) if self.state.vnet_hdr else packets
        fd = self.fd
        for b in bufs:
            try:
                os.write(fd, b)
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    raise
                st.write_errors += 1
                continue
            st.writes += 1
            if self.state.vnet_hdr and b[1]:
                st.gso_writes += 1
        return len(bufs)
