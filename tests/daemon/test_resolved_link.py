"""Registering the mesh DNS server with systemd-resolved, without systemd: a fake `resolvectl`
on PATH records every call, and the exact calls at up, on changes and at down are checked,
as are the paths where resolved is missing or the call fails (one line, the daemon goes on)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import stat
from pathlib import Path

import pytest

from meshguard.cli import up_command
from meshguard.cli.main import build_parser, main
from meshguard.daemon import mesh_daemon
from meshguard.daemon.daemon_config import DaemonConfig
from meshguard.daemon.dns_server import DnsServer
from meshguard.daemon.resolved_link import ResolvedLink, link_commands, routing_domains
from meshguard.dns.resolver import HostAddresses, Resolver, build_table
from meshguard.identity.addressing import org_domain
from meshguard.wire import dns

ORG_A, ORG_B = bytes(range(32)), bytes(range(1, 33))
V4, V6 = "10.99.1.2", "fd99:6d67::1:2"


class Fake:
    """A `resolvectl` on PATH that appends its arguments to `calls` and exits `rc`, or fails
    only the subcommand `fail_on`. Like the real one (getopt_long, which permutes), it takes
    any argument starting with `-` before a `--` for an option, and refuses it."""

    def __init__(self, tmp: Path, rc: int = 0, fail_on: str = "") -> None:
        self.bin = tmp / "bin"
        self.bin.mkdir(exist_ok=True)
        self.log = tmp / "calls"
        self.run_dir = tmp / "resolve"  # stands in for /run/systemd/resolve
        self.run_dir.mkdir(exist_ok=True)
        script = self.bin / "resolvectl"
        script.write_text(
            "#!/bin/sh\n"
            'for a; do case "$a" in --) break;; -*) echo "unknown option $a" >&2; exit 64;; '
            'esac; done\n'
            '[ "$1" = "--" ] && shift\n'
            f'printf "%s\\n" "$*" >> "{self.log}"\n'
            f'if [ "$1" = "{fail_on}" ]; then echo "Failed to set: denied" >&2; exit 1; fi\n'
            + (f'echo "Failed: nothing" >&2; exit {rc}\n' if rc else ""))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        self.ns = (tmp / "self-net", tmp / "init-net")  # stand in for /proc/{self,1}/ns/net
        for p in self.ns:
            p.symlink_to("net:[4026531840]")

    def link(self, **kw: object) -> ResolvedLink:
        env = {"PATH": f"{self.bin}:{os.environ.get('PATH', '')}"}
        return ResolvedLink("mg7", env=env, resolve_dir=self.run_dir,  # type: ignore[arg-type]
                            netns=self.ns, **kw)

    @property
    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def test_commands_and_domains() -> None:
    assert routing_domains([ORG_B, ORG_A, ORG_A]) == [
        "~mesh", *sorted({f"~{org_domain(ORG_A)}.mesh", f"~{org_domain(ORG_B)}.mesh"})]
    assert routing_domains([]) == ["~mesh"]
    assert link_commands("mg0", [V4, V6], 53, ["~mesh"]) == [
        ("dns", "mg0", V4, V6), ("domain", "mg0", "~mesh"), ("dnssec", "mg0", "no")]
    assert link_commands("mg0", [V4, V6], 5353, ["~mesh"])[0] == (
        "dns", "mg0", f"{V4}:5353", f"[{V6}]:5353")


def test_up_registers_changes_resend_and_down_reverts(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    fake = Fake(tmp_path)
    link = fake.link()
    domains = routing_domains([ORG_A])

    async def run() -> None:
        assert await link.apply([V4, V6], 53, domains)
        assert fake.calls == [f"dns mg7 {V4} {V6}", f"domain mg7 {' '.join(domains)}",
                              "dnssec mg7 no"]
        assert await link.apply([V4, V6], 53, domains)  # nothing changed: nothing is run
        assert len(fake.calls) == 3
        assert await link.apply(["10.99.7.7", V6], 53, domains)  # the mesh IPv4 moved
        assert fake.calls[3:] == [f"dns mg7 10.99.7.7 {V6}"]
        more = routing_domains([ORG_A, ORG_B])  # trust reloaded: one more org
        assert await link.apply(["10.99.7.7", V6], 53, more)
        assert fake.calls[4:] == [f"domain mg7 {' '.join(more)}"]
        await link.revert()
        assert fake.calls[5:] == ["revert mg7"]
        await link.revert()  # a second stop does nothing
        assert len(fake.calls) == 6

    with caplog.at_level(logging.INFO, "meshguard.daemon.resolved_link"):
        asyncio.run(run())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_an_interface_named_like_an_option_is_not_taken_for_one(tmp_path: Path) -> None:
    """`-h` and `--help` are interface names the kernel and `up -i` accept: they reach
    resolvectl after `--`, as arguments, never as its options."""
    fake = Fake(tmp_path)
    env = {"PATH": f"{fake.bin}:{os.environ.get('PATH', '')}"}

    async def run(name: str) -> None:
        link = ResolvedLink(name, env=env, resolve_dir=fake.run_dir, netns=fake.ns)
        assert await link.apply([V4], 53, ["~mesh"])
        await link.revert()

    asyncio.run(run("-h"))
    asyncio.run(run("--help"))
    assert fake.calls == [f"dns -h {V4}", "domain -h ~mesh", "dnssec -h no", "revert -h",
                          f"dns --help {V4}", "domain --help ~mesh", "dnssec --help no",
                          "revert --help"]


def test_a_failing_call_is_one_warning_and_then_nothing(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    fake = Fake(tmp_path, rc=1)
    link = fake.link()

    async def run() -> None:
        assert not await link.apply([V4], 53, ["~mesh"])
        assert not await link.apply(["10.99.9.9"], 53, ["~mesh"])  # not tried again
        await link.revert()  # nothing was registered: nothing to revert

    with caplog.at_level(logging.INFO, "meshguard.daemon.resolved_link"):
        asyncio.run(run())
    assert fake.calls == [f"dns mg7 {V4}"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert f"`resolvectl dns mg7 {V4}` failed (Failed: nothing)" in warnings[0]


def test_a_partial_registration_is_still_reverted(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    fake = Fake(tmp_path, fail_on="domain")
    link = fake.link()

    async def run() -> None:
        assert not await link.apply([V4], 53, ["~mesh"])
        await link.revert()

    asyncio.run(run())
    assert fake.calls == [f"dns mg7 {V4}", "domain mg7 ~mesh", "revert mg7"]
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


def test_a_hanging_resolvectl_is_given_up_on(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    fake = Fake(tmp_path)
    (fake.bin / "resolvectl").write_text("#!/bin/sh\nexec sleep 30\n")
    link = fake.link(timeout=0.3)
    assert not asyncio.run(link.apply([V4], 53, ["~mesh"]))
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "no answer within 0.3 s" in warning


@pytest.mark.parametrize("missing", ["resolvectl", "run dir", "same netns"])
def test_without_resolved_nothing_runs_and_one_info_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, missing: str) -> None:
    fake = Fake(tmp_path)
    if missing == "resolvectl":
        (fake.bin / "resolvectl").unlink()
    elif missing == "run dir":
        fake.run_dir.rmdir()
    else:  # a daemon in a test namespace must not configure the host's links
        fake.ns[0].unlink()
        fake.ns[0].symlink_to("net:[4026532999]")
    link = fake.link()

    async def run() -> None:
        for _ in range(3):
            assert not await link.apply([V4], 53, ["~mesh"])
        await link.revert()

    with caplog.at_level(logging.INFO, "meshguard.daemon.resolved_link"):
        asyncio.run(run())
    assert fake.calls == []
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(lines) == 1 and lines[0][0] == logging.INFO
    assert lines[0][1].startswith("not using systemd-resolved (")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _ask_a_mesh(port: int) -> dns.ParsedResponse:
    """The server's UDP answer to `a.mesh A` on 127.0.0.1:port."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.setblocking(False)
        await loop.sock_connect(udp, ("127.0.0.1", port))
        await loop.sock_sendall(udp, dns.build_query(3, "a.mesh", dns.TYPE_A))
        return dns.parse_response(await asyncio.wait_for(loop.sock_recv(udp, 512), 5))


@pytest.mark.parametrize("rc", [0, 1])
def test_the_dns_server_registers_at_start_and_reverts_at_stop_and_serves_either_way(
        tmp_path: Path, rc: int) -> None:
    fake = Fake(tmp_path, rc=rc)
    resolver = Resolver(build_table([("a.mesh", HostAddresses(
        (ipaddress.IPv4Address(V4),), ()))]))
    port = _free_port()
    orgs = [ORG_A]
    server = DnsServer(lambda: resolver, port, link=fake.link(),
                       domains=lambda: routing_domains(orgs))

    async def run() -> None:
        await server.start(["127.0.0.1"])
        resp = await _ask_a_mesh(port)
        assert resp.answers == ((dns.TYPE_A, ipaddress.IPv4Address(V4).packed),)
        orgs.append(ORG_B)
        server.relink()
        await server.stop()

    asyncio.run(run())
    want = [f"dns mg7 127.0.0.1:{port}"]
    if rc == 0:
        both = " ".join(routing_domains([ORG_A, ORG_B]))
        want += [f"domain mg7 {' '.join(routing_domains([ORG_A]))}", "dnssec mg7 no",
                 f"domain mg7 {both}", "revert mg7"]
    assert fake.calls == want


class _Stop(Exception):
    pass


def test_no_resolved_reaches_the_daemon_config_and_the_background_daemon(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(tmp_path / "cfg"))
    seen: list[DaemonConfig] = []
    monkeypatch.setattr(mesh_daemon, "run_foreground", lambda c: seen.append(c) or 0)
    assert main(["up", "-f", "--interface", "mgt7"]) == 0
    assert main(["up", "-f", "--interface", "mgt7", "--no-resolved"]) == 0
    assert [c.resolved for c in seen] == [True, False]
    argvs: list[list[str]] = []

    def popen(argv: list[str], **_: object) -> None:
        argvs.append(argv)
        raise _Stop

    monkeypatch.setattr(up_command.subprocess, "Popen", popen)
    for flags in ([], ["--no-resolved"]):
        with pytest.raises(_Stop):
            up_command.cmd_up(build_parser().parse_args(
                ["up", "--interface", "mgt7", "--run-dir", str(tmp_path / "run"), *flags]))
    assert ["--no-resolved" in a for a in argvs] == [False, True]


def test_a_slow_resolvectl_does_not_hold_up_the_dns_server(tmp_path: Path) -> None:
    """Registration runs beside start-up: queries are answered while resolvectl still waits."""
    fake = Fake(tmp_path)
    gate = tmp_path / "go"
    script = fake.bin / "resolvectl"
    script.write_text(script.read_text().replace(
        "#!/bin/sh\n", f'#!/bin/sh\nwhile [ ! -e "{gate}" ]; do sleep 0.05; done\n', 1))
    resolver = Resolver(build_table([("a.mesh", HostAddresses(
        (ipaddress.IPv4Address(V4),), ()))]))
    port = _free_port()
    server = DnsServer(lambda: resolver, port, link=fake.link(timeout=60))

    async def run() -> None:
        await server.start(["127.0.0.1"])
        resp = await _ask_a_mesh(port)
        assert resp.answers and fake.calls == []  # answered; resolvectl has not run yet
        gate.touch()
        await server.stop()  # waits for the registration, then reverts

    asyncio.run(run())
    assert fake.calls == [f"dns mg7 127.0.0.1:{port}", "domain mg7 ~mesh", "dnssec mg7 no",
                          "revert mg7"]
