"""What the routes of docs/policy.md#routes change in the OS, and how it is undone (blocking calls;
daemon/route_manager.py runs them in a thread).

- **Subnet routes** (`--accept-routes`): `PREFIX dev IFACE proto 109` in the main table. They
  go with the interface when it is removed.
- **Exit node in use** (`--exit-node`), as wg-quick does it: the default routes (IPv4, IPv6)
  `dev IFACE` in a table of their own (number = the daemon's UDP port) and the rule
  `not fwmark PORT lookup PORT` (priority RULE_PRIORITY) for each family; the tunnel's own UDP
  socket carries the mark, so encrypted packets take the main table. `throw` routes in that
  table send the members' underlay addresses (and, with `--exit-node-allow-lan-access`, the
  prefixes of the links the host is on) back to the main table, so gossip and a member met on
  the LAN stay direct.
- **Carrying routes** (a granted subnet router or exit node): IP forwarding on (the previous
  sysctl values are remembered and restored), and an nftables table `inet meshguard-IFACE`
  that masquerades what arrives from the mesh interface and leaves by another one: towards the
  carried subnets for a subnet router, anywhere for an exit node. Masquerading a subnet
  router's traffic is deliberate: the LAN's hosts have no route back to the mesh prefixes, and
  their gateway is usually not the subnet router.

Everything persistent beyond the interface (rules, the exit table, sysctls, the nftables
table) is recorded in `RUN_DIR/IFACE.routes` before it is made, so a daemon killed without its
`down` has it undone at its next start (`cleanup`), and the file is removed once all is undone.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from meshguard.daemon.nft import NftError, run_nft
from meshguard.daemon.route_manager import OsRoutes
from meshguard.identity.store import write_file
from meshguard.policy.table import IPNetwork

log = logging.getLogger("meshguard.routes")

ROUTE_PROTO = 109  # the routes meshguard installs carry this rtnetlink protocol number
RULE_PRIORITY = 5210  # the exit node's policy rule, before the main table (32766)
FIB_RULE_INVERT = 0x2  # "not fwmark ..."
MAIN_TABLE = 254
RT_SCOPE_LINK = 253
FORWARD_SYSCTLS = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")
DEFAULTS = (ipaddress.IPv4Network("0.0.0.0/0"), ipaddress.IPv6Network("::/0"))


def _family(net: IPNetwork) -> int:
    return socket.AF_INET if net.version == 4 else socket.AF_INET6


def nft_table(interface: str) -> str:
    return f"meshguard-{interface}"


@dataclass
class RouteTables:
    interface: str
    table: int  # the exit table's number and the tunnel's fwmark
    state_path: Path
    installed: OsRoutes = field(default_factory=OsRoutes)
    lan: frozenset[IPNetwork] = frozenset()  # the throws added for allow_lan
    saved_sysctls: dict[str, str] = field(default_factory=dict)

    # the record of what is persistent --------------------------------------------------

    def _record(self) -> None:
        data = {"interface": self.interface, "table": self.table, "priority": RULE_PRIORITY,
                "sysctls": self.saved_sysctls, "nft": nft_table(self.interface)}
        write_file(self.state_path, (json.dumps(data) + "\n").encode())

    # applying ------------------------------------------------------------------------

    def apply(self, want: OsRoutes) -> None:
        have = self.installed
        if want == have:
            return
        needs_record = want.exit or want.forward
        if needs_record and not self.state_path.exists():
            self._record()
        with IPRoute() as ipr:
            index = self._index(ipr)
            for net in have.subnets - want.subnets:
                self._route(ipr, "del", net, index, MAIN_TABLE)
            if index is not None:
                for net in sorted(want.subnets - have.subnets, key=str):
                    self._route(ipr, "replace", net, index, MAIN_TABLE)
            self._apply_exit(ipr, index, have, want)
        self._apply_forwarding(have, want)
        self.installed = want
        if not needs_record:
            self.state_path.unlink(missing_ok=True)

    def _index(self, ipr: IPRoute) -> int | None:
        found = ipr.link_lookup(ifname=self.interface)
        return int(found[0]) if found else None

    def _route(self, ipr: IPRoute, op: str, net: IPNetwork, index: int | None, table: int,
               kind: str | None = None) -> None:
        args: dict[str, object] = {"dst": str(net), "table": table, "proto": ROUTE_PROTO,
                                   "family": _family(net)}
        if kind is not None:
            args["type"] = kind
        elif index is not None:
            args["oif"] = index
        try:
            ipr.route(op, **args)
        except NetlinkError as exc:
            if op != "del":
                log.warning("cannot %s the route %s (table %d): %s", op, net, table, exc)

    def _apply_exit(self, ipr: IPRoute, index: int | None, have: OsRoutes, want: OsRoutes
                    ) -> None:
        if have.exit and not want.exit:
            self._drop_exit(ipr)
            return
        if not want.exit:
            return
        if not have.exit:
            for net in DEFAULTS:
                self._route(ipr, "replace", net, index, self.table)
            for fam in (socket.AF_INET, socket.AF_INET6):
                with contextlib.suppress(NetlinkError):
                    ipr.rule("del", table=self.table, priority=RULE_PRIORITY, family=fam)
                ipr.rule("add", table=self.table, priority=RULE_PRIORITY, fwmark=self.table,
                         fwmask=0xFFFFFFFF, flags=FIB_RULE_INVERT, family=fam)
        lan = frozenset(self._lan_prefixes(ipr, index)) if want.allow_lan else frozenset()
        throws = want.bypass | lan
        old = (have.bypass | self.lan) if have.exit else frozenset()
        for net in old - throws:
            self._route(ipr, "del", net, None, self.table, "throw")
        for net in sorted(throws - old, key=str):
            self._route(ipr, "replace", net, None, self.table, "throw")
        self.lan = lan

    def _drop_exit(self, ipr: IPRoute) -> None:
        for fam in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(NetlinkError):
                ipr.rule("del", table=self.table, priority=RULE_PRIORITY, family=fam)
            with contextlib.suppress(NetlinkError):
                for r in ipr.get_routes(family=fam, table=self.table):
                    with contextlib.suppress(NetlinkError):
                        ipr.route("del", **_route_key(r, self.table))
        self.lan = frozenset()

    def _lan_prefixes(self, ipr: IPRoute, index: int | None) -> Iterable[IPNetwork]:
        """The prefixes of the links this host is on (not the mesh interface's)."""
        for fam in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(NetlinkError):
                for r in ipr.get_routes(family=fam, table=MAIN_TABLE):
                    if r["scope"] != RT_SCOPE_LINK and fam == socket.AF_INET:
                        continue
                    dst, oif = r.get_attr("RTA_DST"), r.get_attr("RTA_OIF")
                    if dst is None or oif == index or r["dst_len"] == 0:
                        continue
                    net = ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False)
                    if not net.is_link_local and not net.is_multicast:
                        yield net

    def _apply_forwarding(self, have: OsRoutes, want: OsRoutes) -> None:
        if want.forward and not have.forward:
            for path in FORWARD_SYSCTLS:
                try:
                    prev = Path(path).read_text().strip()
                except OSError:
                    continue
                self.saved_sysctls.setdefault(path, prev)
            self._record()  # the old values are on disk before they change
            for path in self.saved_sysctls:
                _write_sysctl(path, "1")
        elif have.forward and not want.forward:
            self._restore_sysctls()
        nat = (want.masquerade_all, want.masquerade_to) if want.forward else None
        old = (have.masquerade_all, have.masquerade_to) if have.forward else None
        if nat != old:
            if nat is None:
                _nft(f"delete table inet {nft_table(self.interface)}\n", quiet=True)
            else:
                _nft(self._nft_ruleset(*nat))

    def _restore_sysctls(self) -> None:
        for path, value in self.saved_sysctls.items():
            _write_sysctl(path, value)
        self.saved_sysctls.clear()

    def _nft_ruleset(self, everything: bool, to: frozenset[IPNetwork]) -> str:
        name, iface = nft_table(self.interface), json.dumps(self.interface)
        rules = []
        if everything:
            rules.append(f"iifname {iface} oifname != {iface} masquerade")
        else:
            for net in sorted(to, key=str):
                fam = "ip" if net.version == 4 else "ip6"
                # out of another link only: a subnet behind the mesh interface itself (plain
                # WireGuard devices of export-wg) keeps the members' own addresses
                rules.append(f"iifname {iface} oifname != {iface} {fam} daddr {net} masquerade")
        body = "\n".join(f"    {r}" for r in rules)
        # add-then-delete makes the replacement one atomic transaction, table or no table
        return (f"table inet {name}\ndelete table inet {name}\n"
                f"table inet {name} {{\n  chain postrouting {{\n"
                f"    type nat hook postrouting priority srcnat; policy accept;\n"
                f"{body}\n  }}\n}}\n")

    def close(self) -> None:
        """Undo everything (down, or a failed start)."""
        self.apply(OsRoutes())
        self._restore_sysctls()
        self.state_path.unlink(missing_ok=True)


def _route_key(r: object, table: int) -> dict[str, object]:
    get = r.get_attr  # type: ignore[attr-defined]
    key: dict[str, object] = {"table": table, "family": r["family"],  # type: ignore[index]
                              "dst_len": r["dst_len"], "type": r["type"]}  # type: ignore[index]
    dst = get("RTA_DST")
    if dst is not None:
        key["dst"] = dst
    oif = get("RTA_OIF")
    if oif is not None:
        key["oif"] = oif
    return key


def _write_sysctl(path: str, value: str) -> None:
    try:
        Path(path).write_text(value + "\n")
    except OSError as exc:
        log.warning("cannot set %s to %s: %s", path, value, exc)


def _nft(script: str, quiet: bool = False) -> None:
    try:
        run_nft(("-f", "-"), script)
    except NftError as exc:
        if not (quiet and exc.refused):  # `quiet`: a refusal is expected (a missing table)
            log.warning("nft failed: %s", exc)


def cleanup(state_path: Path) -> bool:
    """Undo what a daemon that did not shut down left (its state file); True if it did."""
    try:
        data = json.loads(state_path.read_text(encoding="utf-8"))
        table, iface = int(data["table"]), str(data["interface"])
        sysctls = {str(k): str(v) for k, v in dict(data.get("sysctls", {})).items()}
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the unreadable %s: %s", state_path, exc)
        state_path.unlink(missing_ok=True)
        return False
    tables = RouteTables(iface, table, state_path, saved_sysctls=sysctls)
    with IPRoute() as ipr:
        tables._drop_exit(ipr)
    tables._restore_sysctls()
    _nft(f"delete table inet {nft_table(iface)}\n", quiet=True)
    state_path.unlink(missing_ok=True)
    log.info("undid the routes, forwarding and NAT a previous daemon on %s left", iface)
    return True
