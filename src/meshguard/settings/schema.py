"""Every `meshguard up` option as a config file key (docs/config.md).

A key is the `up` flag's name with `_` for `-` (`--log-level` is `log_level`); its kind is the
TOML type it takes; `live` says whether `meshguard reload` (or SIGHUP) applies a change to a
running daemon, or the daemon needs a restart for it (daemon/config_reload.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshguard.cli.daemon_commands import DEFAULT_PORT
from meshguard.cli.up_command import LOG_FORMATS, LOG_LEVELS, PORTMAP_METHODS
from meshguard.daemon.runtime import DEFAULT_INTERFACE

CONFIG_FILE_NAME = "meshguard.toml"  # in the config dir (meshguard/config.py)

STRING = "string"
INTEGER = "integer"
BOOLEAN = "boolean"
STRINGS = "array of strings"


Value = str | int | bool | list[str] | None


@dataclass(frozen=True)
class Setting:
    key: str
    kind: str
    default: Value
    live: bool
    doc: str
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("interface", STRING, DEFAULT_INTERFACE, False, "the mesh interface's name"),
    Setting("port", INTEGER, DEFAULT_PORT, False,
            "UDP port of WireGuard, gossip and STUN (gossip on port + 1 in kernel mode)"),
    Setting("seed", STRINGS, [], True,
            "members to join through, HOST:PORT (host names are looked up again)"),
    Setting("dns", STRINGS, [], True,
            "domains whose _meshguard._udp TXT records list seeds (docs/seeds.md)"),
    Setting("mdns", BOOLEAN, False, False, "advertise and discover seeds on the LAN by mDNS"),
    Setting("announce", STRING, None, False,
            "the address other members should use to reach this node"),
    Setting("stun", STRINGS, [], True,
            "STUN servers, HOST:PORT (port 3478 when left out)"),
    Setting("kernel", BOOLEAN, False, False, "use the kernel WireGuard module"),
    Setting("split_port", BOOLEAN, False, False,
            "userspace WireGuard with kernel mode's port layout (interoperability tests)"),
    Setting("open", BOOLEAN, False, False, "start even with an empty trust store"),
    Setting("dns_port", INTEGER, 53, False, "port of the *.mesh DNS server"),
    Setting("no_dns", BOOLEAN, False, False, "do not serve *.mesh names"),
    Setting("no_resolved", BOOLEAN, False, False,
            "do not register the DNS server and ~mesh with systemd-resolved"),
    Setting("no_portmap", BOOLEAN, False, False,
            "do not ask the home router to forward the UDP port"),
    Setting("portmap_methods", STRING, ",".join(PORTMAP_METHODS), False,
            "the port mapping protocols, in the order tried (comma-separated)"),
    Setting("advertise_routes", STRINGS, [], False,
            "subnets to carry for the mesh (where a policy grants them; docs/policy.md#routes)"),
    Setting("advertise_exit_node", BOOLEAN, False, False,
            "offer 0.0.0.0/0 and ::/0 (where a policy grants them)"),
    Setting("accept_routes", BOOLEAN, False, True, "use the subnets granted members carry"),
    Setting("exit_node", STRING, None, True,
            "send the default routes through this granted exit node (name or key)"),
    Setting("exit_node_allow_lan_access", BOOLEAN, False, True,
            "with exit_node: keep the local LAN reachable directly"),
    Setting("log_level", STRING, "info", True, "how much the daemon logs", LOG_LEVELS),
    Setting("log_format", STRING, "text", False,
            "log lines as text, or one JSON object per line", LOG_FORMATS),
    Setting("metrics", STRING, None, False,
            "serve Prometheus metrics on [ADDR:]PORT (loopback unless ADDR is given)"),
)

BY_KEY = {s.key: s for s in SETTINGS}
# keys `reload` applies only while the daemon runs the part they change (docs/config.md)
LIVE_WITH_ROUTES = frozenset({"accept_routes", "exit_node", "exit_node_allow_lan_access"})
