"""`meshguard wireguard IFNAME [-f]`: a userspace WireGuard interface, as `wireguard-go IFNAME`.

Creates the TUN interface and serves the UAPI on /var/run/wireguard/IFNAME.sock, so `wg set`,
`wg setconf`, `wg show` and `wg showconf` work unmodified. Without `-f` (or the environment
variable WG_PROCESS_FOREGROUND=1, as wireguard-go honours) the process daemonizes: the parent
exits 0 once the interface and socket exist, or prints the error and exits 1. SIGTERM/SIGINT
remove the socket and the interface and exit 0. LOG_LEVEL=error|info|verbose|debug.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from meshguard.daemon.startup_trace import mark
from meshguard.errors import MeshguardError

_LEVELS = {
    "silent": logging.CRITICAL + 1,
    "error": logging.ERROR,
    "info": logging.INFO,
    "verbose": logging.DEBUG,
    "debug": logging.DEBUG,
}


class DaemonStartError(MeshguardError):
    """The background interface process failed before it was ready."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's sub-commands to the parser."""
    p = sub.add_parser(
        "wireguard",
        help="run a userspace WireGuard interface (configure it with `wg`)",
        description="Create a userspace WireGuard interface and serve the UAPI socket "
        "/var/run/wireguard/IFNAME.sock, like `wireguard-go IFNAME`.",
    )
    p.add_argument("ifname", metavar="IFNAME", help="interface name (1-15 characters)")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("--mtu", type=int, default=None, help="interface MTU (default 1420)")
    p.set_defaults(func=run)


def _setup_logging(to_stderr: bool) -> None:
    level = _LEVELS.get(os.environ.get("LOG_LEVEL", "error").lower(), logging.ERROR)
    handler: logging.Handler = (
        logging.StreamHandler(sys.stderr) if to_stderr else logging.NullHandler()
    )
    logging.basicConfig(level=level, handlers=[handler], format="%(levelname)s: %(message)s")


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `meshguard --help` needs none of it
    from meshguard.daemon.wg_interface import preflight
    from meshguard.dataplane.tun import DEFAULT_MTU, validate_ifname

    mark("imports")
    ifname: str = args.ifname
    try:
        validate_ifname(ifname)
    except MeshguardError as exc:
        raise MeshguardError(str(exc)) from None
    preflight(ifname)
    mtu = args.mtu or DEFAULT_MTU
    foreground = args.foreground or os.environ.get("WG_PROCESS_FOREGROUND") == "1"
    if foreground:
        _setup_logging(True)
        _run_loop(ifname, mtu, None)
        return 0
    return _daemonize(ifname, mtu)


def _run_loop(ifname: str, mtu: int, ready_pipe: list[int] | None) -> None:
    """Serve until a signal; `ready_pipe` ([fd]) gets "ok" and is closed once ready."""
    def ready() -> None:
        if ready_pipe:
            fd = ready_pipe.pop()
            os.write(fd, b"ok\n")
            os.close(fd)

    import asyncio

    from meshguard.daemon.wg_interface import serve

    asyncio.run(serve(ifname, mtu=mtu, on_ready=ready))


def _daemonize(ifname: str, mtu: int) -> int:
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid > 0:
        os.close(w)
        chunks = []
        while True:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(r)
        os.waitpid(pid, 0)
        msg = b"".join(chunks).decode(errors="replace").strip()
        if msg == "ok":
            return 0
        raise DaemonStartError(msg or f"interface {ifname} failed to start")
    # first child: new session, fork again so the daemon can never reacquire a terminal
    try:
        os.close(r)
        os.setsid()
        if os.fork() > 0:
            os._exit(0)
        os.chdir("/")
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        if devnull > 2:
            os.close(devnull)
        _setup_logging(False)
        pipe = [w]
        try:
            _run_loop(ifname, mtu, pipe)
        except BaseException as exc:
            text = str(exc) if isinstance(exc, MeshguardError) else f"{type(exc).__name__}: {exc}"
            if pipe:
                with contextlib.suppress(OSError):
                    os.write(pipe[0], f"{text}\n".encode())
            os._exit(1)
        os._exit(0)
    except BaseException:
        os._exit(1)
