"""Point systemd-resolved's `*.mesh` lookups at this node's DNS server, and take that back.

Once the DNS server (daemon/dns_server.py) listens, `up` runs

    resolvectl dns IFACE ADDR[:PORT]...         the mesh addresses the server is bound to
    resolvectl domain IFACE ~mesh ~ORG.mesh...  routing-only domains: mesh, and each trusted
                                                org's domain (more specific than ~mesh, so with
                                                two daemons on one host each org's names go to
                                                the daemon that trusts the org)
    resolvectl dnssec IFACE no                  the mesh zone is unsigned

and when the daemon stops (`meshguard down`, SIGTERM) `resolvectl revert IFACE`. With only
`~` domains the link is never resolved's default route, so nothing but `*.mesh` goes there. A
command is run again only when its arguments change (the mesh IPv4 moved after a collision,
trust was reloaded). `resolvectl` rather than D-Bus: it ships in the same package as resolved,
so it is there exactly when resolved is, and it needs no new dependency.

Without systemd-resolved (no `resolvectl` on PATH, or no /run/systemd/resolve) this logs one
info line and does nothing; likewise in a network namespace other than init's (a test mesh, a
container sharing the host's D-Bus), where resolved would take our interface index for one of
its own links. A command that fails or hangs (resolved stopped, too old, denied)
draws one warning and no further attempts; the daemon runs on, and `dig @<mesh IPv4>` still
works (docs/mesh-dns-and-org-revocation.md#serving-and-using-it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from meshguard.identity.addressing import org_domain
from meshguard.identity.names import MESH_TLD

log = logging.getLogger(__name__)

RESOLVE_DIR = Path("/run/systemd/resolve")  # resolved's runtime directory: it is running
# our network namespace, and init's (resolved's)
NETNS = (Path("/proc/self/ns/net"), Path("/proc/1/ns/net"))
TIMEOUT = 5.0  # seconds one resolvectl call may take (it waits on D-Bus)


def server_arg(address: str, port: int) -> str:
    """resolvectl's server syntax: ADDR, or ADDR:PORT / [ADDR6]:PORT off port 53."""
    if port == 53:
        return address
    if ipaddress.ip_address(address).version == 6:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


def routing_domains(org_keys: Iterable[bytes]) -> list[str]:
    """`~mesh`, then `~<org domain>.mesh` for each trusted org key (sorted, no repeats)."""
    orgs = sorted({f"~{org_domain(k)}.{MESH_TLD}" for k in org_keys})
    return [f"~{MESH_TLD}", *orgs]


def link_commands(interface: str, addresses: Sequence[str], port: int,
                  domains: Sequence[str]) -> list[tuple[str, ...]]:
    """The resolvectl argument lists that register the server and domains on `interface`."""
    return [("dns", interface, *(server_arg(a, port) for a in addresses)),
            ("domain", interface, *domains),
            ("dnssec", interface, "no")]


class ResolvedLink:
    """Registers and reverts one interface's DNS settings in systemd-resolved."""

    def __init__(self, interface: str, *, env: Mapping[str, str] | None = None,
                 resolve_dir: Path = RESOLVE_DIR, timeout: float = TIMEOUT,
                 netns: tuple[Path, Path] = NETNS) -> None:
        self.interface = interface
        self.env = dict(os.environ if env is None else env)
        self.resolve_dir = resolve_dir
        self.netns = netns
        self.timeout = timeout
        self.off = False  # absent, or failed once: nothing more is tried
        self.registered = False  # a registering command succeeded: revert at stop
        self._done: dict[str, tuple[str, ...]] = {}  # subcommand -> the arguments applied
        self._tool: str | None = None
        self._lock = asyncio.Lock()  # one call at a time, in the order asked

    def _resolvectl(self) -> str | None:
        if self._tool is None:
            tool = shutil.which("resolvectl", path=self.env.get("PATH", os.defpath))
            why = ("no resolvectl" if tool is None
                   else f"no {self.resolve_dir}" if not self.resolve_dir.is_dir()
                   else "another network namespace" if self._foreign_netns() else None)
            if why is not None:
                self.off = True
                log.info("not using systemd-resolved (%s): *.mesh names are not added to the "
                         "system resolver; query the mesh DNS server directly", why)
                return None
            self._tool = tool
        return self._tool

    def _foreign_netns(self) -> bool:
        try:
            return os.readlink(self.netns[0]) != os.readlink(self.netns[1])
        except OSError:  # no /proc, or init's namespace is not ours to look at
            return False

    async def apply(self, addresses: Sequence[str], port: int, domains: Sequence[str]) -> bool:
        """Register the server on `addresses` and `domains`; True when resolved has them."""
        async with self._lock:
            if self.off or not addresses or self._resolvectl() is None:
                return False
            for args in link_commands(self.interface, addresses, port, domains):
                if self._done.get(args[0]) == args:
                    continue
                if not await self._run(args):
                    return False
                self._done[args[0]] = args
                self.registered = True
            return True

    async def revert(self) -> None:
        """Take back what `apply` registered (at stop)."""
        async with self._lock:
            await self._revert()

    async def _revert(self) -> None:
        if not self.registered or self._tool is None:
            return
        self.registered = False
        self._done.clear()
        if self.off:  # warned already: revert quietly
            with contextlib.suppress(OSError):
                await self._call(("revert", self.interface))
            return
        await self._run(("revert", self.interface))

    async def _call(self, args: tuple[str, ...]) -> tuple[int, str]:
        assert self._tool is not None
        # `--`: an interface named `-h` (a valid name) is an argument, not an option
        proc = await asyncio.create_subprocess_exec(
            self._tool, "--", *args, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=self.env)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            return -1, f"no answer within {self.timeout:g} s"
        text = err.decode("utf-8", "replace").strip().splitlines()
        return proc.returncode or 0, text[0][:200] if text else ""

    async def _run(self, args: tuple[str, ...]) -> bool:
        try:
            rc, err = await self._call(args)
        except OSError as exc:
            rc, err = -1, exc.strerror or str(exc)
        if rc == 0:
            return True
        self.off = True
        log.warning("systemd-resolved: `resolvectl %s` failed (%s); *.mesh names are not in "
                    "the system resolver (--no-resolved turns this off)", " ".join(args),
                    err or f"exit status {rc}")
        return False
