"""Route-netlink notifications of address, route and link changes, as a non-blocking socket the
event loop reads (daemon/underlay_watch.py).

Only the fact that something changed is used (the watch then looks at the underlay itself), so
this needs no netlink library: one AF_NETLINK socket bound to the multicast groups, and the
16-byte message headers plus the interface index of each message, to ignore changes of the
mesh interface itself (its own addresses and routes). Messages not from the kernel (port id 0)
are ignored.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct

RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = (RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR
          | RTMGRP_IPV6_ROUTE)

RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWADDR, RTM_DELADDR = 20, 21
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTA_OIF = 4

NLMSG_HDR = struct.Struct("=IHHII")  # length, type, flags, seq, port id
IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
RTMSG_LEN = 12
RTATTR = struct.Struct("=HH")


def _route_oif(msg: bytes) -> int | None:
    """The output interface (RTA_OIF) of an rtmsg body, if it names one."""
    off = RTMSG_LEN
    while off + RTATTR.size <= len(msg):
        length, kind = RTATTR.unpack_from(msg, off)
        if length < RTATTR.size or off + length > len(msg):
            return None
        if kind == RTA_OIF and length >= RTATTR.size + 4:
            return int(struct.unpack_from("=i", msg, off + RTATTR.size)[0])
        off += (length + 3) & ~3
    return None


def interface_of(kind: int, body: bytes) -> int | None:
    """The interface index a route-netlink message is about (None: not known)."""
    if kind in (RTM_NEWLINK, RTM_DELLINK) and len(body) >= IFINFO.size:
        return int(IFINFO.unpack_from(body)[2])
    if kind in (RTM_NEWADDR, RTM_DELADDR) and len(body) >= IFADDR.size:
        return int(IFADDR.unpack_from(body)[4])
    if kind in (RTM_NEWROUTE, RTM_DELROUTE) and len(body) >= RTMSG_LEN:
        return _route_oif(body)
    return None


def relevant(datagram: bytes, ignore_index: int | None) -> int:
    """How many messages of one netlink datagram are address/route/link changes of an
    interface other than `ignore_index`."""
    n = 0
    off = 0
    while off + NLMSG_HDR.size <= len(datagram):
        length, kind, _, _, _ = NLMSG_HDR.unpack_from(datagram, off)
        if length < NLMSG_HDR.size or off + length > len(datagram):
            break
        if kind in (RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR, RTM_NEWROUTE,
                    RTM_DELROUTE):
            body = datagram[off + NLMSG_HDR.size:off + length]
            if ignore_index is None or interface_of(kind, body) != ignore_index:
                n += 1
        off += (length + 3) & ~3
    return n


class NetlinkEvents:
    """A route-netlink socket subscribed to address, route and link changes."""

    def __init__(self, sock: socket.socket, ignore_index: int | None) -> None:
        self.sock = sock
        self.ignore_index = ignore_index
        self.overflows = 0

    @classmethod
    def open(cls, ignore_ifname: str | None = None) -> NetlinkEvents:
        """Subscribe; OSError where netlink is not available."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                             socket.NETLINK_ROUTE)
        try:
            sock.bind((0, GROUPS))
        except OSError:
            sock.close()
            raise
        index = None
        if ignore_ifname:
            with contextlib.suppress(OSError):
                index = socket.if_nametoindex(ignore_ifname)
        return cls(sock, index)

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> int:
        """Read every pending notification; how many were relevant changes. An overrun
        socket (ENOBUFS: notifications were lost) counts as one."""
        n = 0
        while True:
            try:
                data, addr = self.sock.recvfrom(65536)
            except BlockingIOError:
                return n
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    return n
                # the kernel dropped notifications: something changed
                self.overflows += 1
                n += 1
                continue
            if addr[0] != 0:
                continue  # not from the kernel
            n += relevant(data, self.ignore_index)

    def close(self) -> None:
        self.sock.close()
