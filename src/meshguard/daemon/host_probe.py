"""What the daemon asks the host before it starts: privileges, seed addresses, and the local
addresses it advertises as its endpoints."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Sequence

from meshguard.daemon.daemon_config import StartupError
from meshguard.sansio import Endpoint

CAP_NET_ADMIN = 12


def has_net_admin(status_path: str = "/proc/self/status") -> bool:
    """Whether this process holds CAP_NET_ADMIN in its effective set (root, or systemd's
    AmbientCapabilities=CAP_NET_ADMIN)."""
    try:
        with open(status_path, encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def resolve_seeds(seeds: list[Endpoint]) -> list[Endpoint]:
    out: list[Endpoint] = []
    for host, port in seeds:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise StartupError(f"cannot resolve seed {host}: {exc.strerror}") from None
        # prefer IPv4 (the mesh's usual underlay), keep one address per seed
        infos.sort(key=lambda i: 0 if i[0] == socket.AF_INET else 1)
        addr = str(infos[0][4][0]).split("%")[0]
        out.append((addr, port))
    return out


def local_addresses(exclude_ifname: str) -> list[str]:
    """Global unicast addresses of this host (the endpoints advertised without --announce)."""
    found: list[str] = []
    # imported here, not at the top: pyroute2 costs a userspace daemon ~12 MiB of RSS, and
    # this probe runs only when no seed route and no --announce name a local address
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        names = {ln["index"]: ln.get_attr("IFLA_IFNAME") for ln in ipr.get_links()}
        for a in ipr.get_addr():
            if names.get(a["index"]) == exclude_ifname:
                continue
            text = a.get_attr("IFA_ADDRESS")
            if not text:
                continue
            ip = ipaddress.ip_address(text)
            if ip.is_loopback or ip.is_link_local or ip.is_multicast:
                continue
            if ip in ipaddress.ip_network("10.99.0.0/16") or (
                    ip.version == 6 and ip in ipaddress.ip_network("fd99:6d67::/64")):
                continue
            found.append(str(ip))
    found.sort(key=lambda s: (":" in s, s))
    return found


def underlay_hosts(seeds: Sequence[Endpoint], exclude_ifname: str) -> list[str]:
    """The underlay addresses this node advertises without --announce: the local source
    addresses towards the seeds, else the global addresses (both sorted as found)."""
    hosts: list[str] = []
    for s, _ in seeds:
        src = route_source(s)
        if src and src not in hosts and not ipaddress.ip_address(src).is_loopback:
            hosts.append(src)
    return hosts or local_addresses(exclude_ifname)


def route_source(dest: str) -> str | None:
    """The local address the kernel would use to reach `dest` (no packet is sent)."""
    fam = socket.AF_INET6 if ":" in dest else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        try:
            s.connect((dest, 9))
            return str(s.getsockname()[0])
        except OSError:
            return None


def default_gateway(route_path: str = "/proc/net/route") -> str | None:
    """The IPv4 default route's gateway (the home router a port mapping is asked of)."""
    try:
        with open(route_path, encoding="ascii") as f:
            lines = f.read().splitlines()[1:]
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        cols = line.split()
        # Iface Destination Gateway Flags ...: destination 0, flags RTF_UP|RTF_GATEWAY (0x3)
        if len(cols) < 4 or cols[1] != "00000000":
            continue
        try:
            flags, gw = int(cols[3], 16), int(cols[2], 16)
        except ValueError:
            continue
        if flags & 0x3 == 0x3 and gw:
            return str(ipaddress.IPv4Address(gw.to_bytes(4, "little")))
    return None
