"""`meshguard ping NAME|MESH-IP [-c COUNT] [--interval S]`: path probes to one member through
the running daemon (the control socket's `ping`, daemon/path_probes.py): per probe the path
(direct ENDPOINT, or relayed via MEMBER at ENDPOINT) and the RTT (of a relayed member: to its
relay; the end-to-end RTT its WireGuard handshakes measured follows), then the path MTU and,
for a relayed member, why it is relayed. Unknown member: one error line, exit 1; no answer to any
probe: "timeout", exit 1."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from meshguard.cli.daemon_commands import add_common, run_dir_of

PROBE_TIMEOUT = 2.0


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return v
    return parse


def path_line(r: dict[str, object]) -> str:
    if r.get("path") == "relayed":
        return f"relayed via {r.get('via') or '?'} at {r.get('endpoint') or '?'}"
    return f"direct {r.get('endpoint') or '?'}"


def cmd_ping(args: argparse.Namespace) -> int:
    from meshguard.daemon.control_client import select_daemon

    client = select_daemon(run_dir_of(args), args.interface)
    client.timeout = max(client.timeout, PROBE_TIMEOUT + 3.0)
    answered = 0
    last: dict[str, object] = {}
    for i in range(args.count):
        if i:
            time.sleep(args.interval)
        last = client.request("ping", target=args.target, timeout=PROBE_TIMEOUT)
        rtt = last.get("rtt_ms")
        if rtt is None:
            print(f"probe {i + 1}: {path_line(last)}: timeout", flush=True)
        else:
            answered += 1
            hop = " to the relay" if last.get("rtt_to") == "relay" else ""
            print(f"probe {i + 1}: {path_line(last)}: rtt {rtt} ms{hop}", flush=True)
    if last.get("path") == "relayed":
        e2e = last.get("end_to_end_rtt_ms")
        how = "WireGuard handshakes" if last.get("end_to_end_source") == "handshake" else "-"
        print(f"end-to-end RTT: {e2e} ms ({how})" if e2e is not None
              else "end-to-end RTT: unknown (no handshake measured it yet)")
        print("path MTU: relayed (not probed)")
    else:
        mtu = last.get("mtu")
        print(f"path MTU: {mtu if mtu is not None else 'unknown'} ({last.get('mtu_state')})")
    print(f"why: {last.get('reason') or 'unknown'}")
    if not answered:
        print("timeout")
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ping", help="probe the path to a member: route, RTT, path MTU")
    p.add_argument("target", metavar="NAME|MESH-IP",
                   help="a mesh DNS name, a trust or certificate name, or a mesh address")
    p.add_argument("-c", "--count", type=_positive(int), default=4,
                   help="probes to send (default 4)")
    p.add_argument("--interval", type=_positive(float), default=1.0,
                   metavar="S", help="seconds between probes (default 1)")
    add_common(p, None)
    p.set_defaults(func=cmd_ping)


__all__ = ["cmd_ping", "path_line", "register"]
