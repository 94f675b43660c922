"""The daemon's routes (docs/policy.md#routes): grants in, allowed IPs and OS routes out.

`RouteManager.set_grants(grants)` takes the route grants of the org-signed policies in force
(daemon/policy_runner.py calls it whenever they change). The sans-IO planner (mesh/routes.py)
decides; the node re-plans at every reconcile (membership, trust, grants), so a withdrawn grant
takes the allowed IPs away in the same call, and `sync` then brings the OS in line
(daemon/route_tables.py: subnet routes, the exit table and rules, forwarding and NAT). OS
changes run one at a time in a thread (netlink and nft calls block), the newest plan last.
`close` (down, or a failed start) removes everything; `open` first undoes what a daemon that
was killed left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from meshguard.clock import Clock
from meshguard.daemon.daemon_config import DaemonConfig
from meshguard.mesh.node import Action, MeshNode
from meshguard.mesh.routes import RouteOptions, RoutePlan, RoutePlanner
from meshguard.policy.table import IPNetwork, RouteGrant

if TYPE_CHECKING:
    from meshguard.daemon.route_tables import RouteTables

log = logging.getLogger("meshguard.routes")


@dataclass(frozen=True)
class OsRoutes:
    """What should be installed in the OS (daemon/route_tables.py), from a RoutePlan."""

    subnets: frozenset[IPNetwork] = frozenset()
    exit: bool = False
    bypass: frozenset[IPNetwork] = frozenset()  # throw routes in the exit table
    allow_lan: bool = False
    forward: bool = False
    masquerade_all: bool = False  # an exit node: everything from the mesh, out of other links
    masquerade_to: frozenset[IPNetwork] = frozenset()  # a subnet router: towards these


def state_path(run_dir: Path, interface: str) -> Path:
    return run_dir / f"{interface}.routes"


def os_routes(plan: RoutePlan, options: RouteOptions) -> OsRoutes:
    return OsRoutes(
        subnets=frozenset(p for p, _ in plan.subnets),
        exit=plan.exit_via is not None,
        bypass=frozenset(plan.bypass),
        allow_lan=options.exit_node_allow_lan_access,
        forward=bool(plan.carried) or plan.exit_served,
        masquerade_all=plan.exit_served,
        masquerade_to=frozenset(plan.carried),
    )


class RouteManager:
    def __init__(self, node: MeshNode, options: RouteOptions, interface: str, table: int,
                 run_dir: Path, clock: Clock, execute: Callable[[list[Action]], None],
                 mark_tunnel: Callable[[int], None]) -> None:
        self.node = node
        self.options = options
        self.clock = clock
        self.execute = execute
        self.mark_tunnel = mark_tunnel
        self.planner = RoutePlanner(options)
        node.routes = self.planner
        # imported here: pyroute2 costs ~12 MiB of RSS that a daemon without routes never pays
        from meshguard.daemon.route_tables import RouteTables

        self.tables: RouteTables = RouteTables(interface, table, state_path(run_dir, interface))
        self._want: OsRoutes | None = None
        self._task: asyncio.Task[None] | None = None
        self._marked = False
        self._problem: str | None = None
        self.applied_at: float | None = None  # monotonic time of the last OS change

    async def open(self, stack: contextlib.AsyncExitStack) -> None:
        from meshguard.daemon.route_tables import cleanup

        await asyncio.to_thread(cleanup, self.tables.state_path)
        stack.push_async_callback(self.close)

    def set_grants(self, grants: Sequence[RouteGrant]) -> None:
        """The route grants in force changed: re-plan, reconfigure the peers and the OS.

        The grants must include this node's own (route_grants over the members *and* this
        node): they are what turns forwarding and NAT on for a subnet router or exit node."""
        if not self.planner.set_grants(grants):
            return
        log.info("route grants: %s", ", ".join(f"{g.prefix} via {g.member.hex()[:12]}"
                                               for g in self.planner.grants) or "none")
        self.execute(self.node.reconcile(self.clock.wall()))
        self.sync()

    def set_underlay(self, hosts: Sequence[str]) -> None:
        """This node's own underlay addresses (never covered by a subnet route)."""
        self.planner.local_underlay = tuple(hosts)

    def sync(self) -> None:
        """Bring the OS in line with the node's current plan (after any reconcile)."""
        for w in self.planner.warnings:
            log.warning("%s", w)
        self.planner.warnings.clear()
        plan = self.node.route_plan
        if plan.exit_problem != self._problem:
            self._problem = plan.exit_problem
            if plan.exit_problem:
                log.warning("%s; the default route stays as it is", plan.exit_problem)
        want = os_routes(plan, self.options)
        if want == self._want:
            return
        self._want = want
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._apply())

    async def _apply(self) -> None:
        while self._want is not None and self._want != self.tables.installed:
            want = self._want
            try:
                if want.exit and not self._marked:  # before the rule sends anything there
                    await asyncio.to_thread(self.mark_tunnel, self.tables.table)
                    self._marked = True
                await asyncio.to_thread(self.tables.apply, want)
            except Exception as exc:
                log.error("cannot apply the routes: %s", exc)
                return
            self.applied_at = self.clock.monotonic()
            log.info("routes applied: %d subnets%s%s", len(want.subnets),
                     ", exit node in use" if want.exit else "",
                     ", forwarding for the mesh" if want.forward else "")

    async def close(self) -> None:
        self._want = None
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        try:
            await asyncio.to_thread(self.tables.close)
        except Exception as exc:
            log.error("cannot remove the routes: %s", exc)


async def start_routes(cfg: DaemonConfig, node: MeshNode, runner: object, clock: Clock,
                       execute: Callable[[list[Action]], None], underlay: Sequence[str],
                       stack: contextlib.AsyncExitStack) -> RouteManager | None:
    """The daemon's route manager, or None when `up` asked for no routes; either way what a
    killed daemon on this interface left is undone first."""
    if cfg.routes == RouteOptions():
        path = state_path(cfg.run_dir, cfg.interface)
        if path.exists():
            from meshguard.daemon.route_tables import cleanup

            await asyncio.to_thread(cleanup, path)
        return None
    # the exit table and the tunnel's fwmark take the UDP port's number, as wg-quick's do
    routes = RouteManager(node, cfg.routes, cfg.interface, cfg.port, cfg.run_dir, clock,
                          execute, tunnel_marker(runner, cfg.interface))
    routes.set_underlay(underlay)
    await routes.open(stack)
    return routes


def tunnel_marker(runner: object, interface: str) -> Callable[[int], None]:
    """How to put the fwmark on the tunnel's own UDP packets in either mode (a blocking call:
    the kernel device is set over netlink)."""
    engine = getattr(runner, "engine", None)
    kernel = getattr(runner, "kernel", None)

    def mark(value: int) -> None:
        if engine is not None:
            engine.set_fwmark(value)
        elif kernel is not None:
            from meshguard.daemon.kernel_wg import build_set_device

            kernel.apply(build_set_device(interface, fwmark=value))
        gossip = getattr(runner, "gossip", None)
        if gossip is not None and hasattr(gossip, "sock"):
            from meshguard.dataplane.udp_io import set_fwmark

            with contextlib.suppress(OSError):
                set_fwmark(gossip.sock, value)
    return mark
