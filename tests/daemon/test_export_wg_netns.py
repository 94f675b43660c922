"""A plain WireGuard device reaches the mesh through its gateway member (marked netns).

Debian's wireguard-go in a namespace of its own, set up from the config `meshguard export-wg`
wrote, pings and opens TCP to the gateway's mesh address. One LAN: the gateway `gw`, a second
member `m`, and the device's namespace `phone`. In order: a device exported before the daemon
starts works from the start (the time from `up` to the first reply is printed); a second one
exported while the daemon runs (its endpoint taken from the daemon's status) is picked up
live; a removed device is refused at once.
"""

from __future__ import annotations

import base64
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from meshguard.identity import keygen, store
from meshguard.rng import SystemRng
from meshguard.testing.netns import netns_skip_reason

from .meshnet import MeshLan, Node, PlainWgDevice, trust_all, wg_quick_values

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(netns_skip_reason() is not None, reason=str(netns_skip_reason())),
]

ECHO_PORT = 7007
DEVICE_SUBNET = "10.98.200.0/24"  # granted to gw, so its devices are numbered in it
ECHO_SERVER = f"""
import socket
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", {ECHO_PORT}))
s.listen()
while True:
    c, _ = s.accept()
    with c:
        c.sendall(b"echo:" + c.recv(100))
"""
ECHO_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as c:
    c.sendall(b"hello")
    print(c.recv(100).decode())
"""


@dataclass
class Lab:
    lan: MeshLan
    gw: Node
    m: Node
    phone: Node
    tablet: Node
    up_to_reply: float


def wait_reply(node: Node, address: str, timeout: float) -> float:
    """Seconds until `address` answers a ping from `node`'s namespace."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if node.ns.ping(address, count=1, wait=0.3, interval=0.2):
            return time.monotonic() - t0
    raise AssertionError(f"{address} did not answer {node.name} within {timeout} s\n"
                         + node.lan.logs())


def tcp_echo(node: Node, address: str) -> str:
    res = node.ns.run([sys.executable, "-c", ECHO_CLIENT, address, str(ECHO_PORT)], check=False,
                      timeout=15)
    return res.stdout.strip() or res.stderr.strip()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("exportwg")
    with MeshLan(tmp) as lan:
        gw, m = lan.add_node("gw"), lan.add_node("m")
        phone = lan.add_node("phone", keys=False)
        tablet = lan.add_node("tablet", keys=False)
        trust_all([gw, m])
        # gw is also an org admin whose signed policy grants it the device subnet; both
        # members trust the org and hold the policy before they start
        org = keygen.generate_org_key(gw.cfg, SystemRng(), force=False)
        for n in (gw, m):
            p = n.cfg / store.TRUSTED_ORGS / "fleet.org"
            p.parent.mkdir(mode=0o700, exist_ok=True)
            p.write_text(store.public_key_file(org.public_key.raw).decode())
        (tmp / "grant.policy").write_text(
            f"route {DEVICE_SUBNET} via {base64.b64encode(gw.identity).decode()}\n")
        res = gw.cli("org-policy", "sign", str(tmp / "grant.policy"), "--serial", "1")
        assert res.returncode == 0, res.stderr
        shutil.copytree(gw.cfg / "policies", m.cfg / "policies")
        res = gw.cli("export-wg", "phone", "--endpoint", f"{gw.ip}:{gw.port}", "--no-qr",
                     "--out", str(tmp / "phone.conf"))
        assert res.returncode == 0, res.stderr
        for n in (gw, m):
            n.ns.popen([sys.executable, "-c", ECHO_SERVER])
        t0 = time.monotonic()
        gw.up(None, "--advertise-routes", DEVICE_SUBNET)
        up = time.monotonic() - t0
        device = PlainWgDevice.start(phone.ns, (tmp / "phone.conf").read_text(), tmp)
        try:
            took = time.monotonic() - t0 + wait_reply(phone, gw.mesh_v4, 15)
            print(f"\nexport-wg: daemon start to the device's first reply: {took:.2f} s (the "
                  f"control socket answered after {up:.2f} s)")
            m.up([gw], "--accept-routes")
            lan.wait(lambda: m.tunnel_to(gw) and gw.tunnel_to(m), "the members' tunnels")
            yield Lab(lan, gw, m, phone, tablet, took)
        finally:
            device.close()


def test_device_exported_before_start_reaches_its_gateway(lab: Lab) -> None:
    gw, phone = lab.gw, lab.phone
    conf = wg_quick_values((lab.lan.tmp / "phone.conf").read_text())
    assert conf["Endpoint"] == [f"{gw.ip}:{gw.port}"]
    assert phone.ns.ping(gw.mesh_v4, count=3, wait=1.0)
    assert tcp_echo(phone, gw.mesh_v4) == "echo:hello"
    addr = conf["Address"][0]
    wg = gw.ns.run(["wg", "show", gw.iface, "allowed-ips"]).stdout
    assert addr in wg, wg
    # the device's peer is not a member: the member m keeps its tunnel, status lists m only
    assert [x["tunnel"] for x in gw.status()["members"]] == [True]
    assert lab.m.ping(gw)


def test_device_reaches_another_member_through_its_gateway(lab: Lab) -> None:
    """m routes the subnet the policy grants gw and gw offers (m accepts routes): the device
    pings and opens TCP to m's mesh address through gw, and m sees the device's address."""
    m, phone = lab.m, lab.phone
    addr = wg_quick_values((lab.lan.tmp / "phone.conf").read_text())["Address"][0]
    assert addr == "10.98.200.1/32"  # numbered inside the granted subnet
    lab.lan.wait(lambda: DEVICE_SUBNET in m.ns.run(["ip", "route"]).stdout,
                 "m's route to the gateway's devices")
    assert DEVICE_SUBNET in m.ns.run(["wg", "show", m.iface, "allowed-ips"]).stdout
    took = wait_reply(phone, m.mesh_v4, 15)
    print(f"\nexport-wg: the device reaches another member {took:.2f} s after m's route")
    assert tcp_echo(phone, m.mesh_v4) == "echo:hello"
    # m sees the device's own address: the device subnet is not masqueraded on the way
    seen = m.ns.run(["ss", "-tn", "state", "time-wait"]).stdout
    assert addr.split("/")[0] in seen, seen


def test_a_device_cannot_send_from_another_address(lab: Lab) -> None:
    """The attack: the device sends from the member m's mesh address (or any address but its
    own). The gateway drops every such packet (allowed IPs), so nothing answers."""
    gw, phone = lab.gw, lab.phone
    dev = next(line.split(":")[1].strip() for line in phone.ns.run(
        ["ip", "-o", "link", "show"]).stdout.splitlines() if ": wgd" in line)
    phone.ns.add_address(dev, f"{lab.m.mesh_v4}/32")
    try:
        before = gw.status()["counters"]["wireguard_bad_source"]
        res = phone.ns.run(["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "-I",
                            lab.m.mesh_v4, gw.mesh_v4], check=False)
        assert res.returncode != 0, res.stdout
        assert gw.status()["counters"]["wireguard_bad_source"] >= before + 3
    finally:
        phone.ns.run(["ip", "addr", "del", f"{lab.m.mesh_v4}/32", "dev", dev], check=False)
    assert phone.ns.ping(gw.mesh_v4, count=1, wait=1.0)


def test_live_export_remove_and_the_daemons_endpoint(lab: Lab) -> None:
    gw, tmp = lab.gw, lab.lan.tmp
    # no --endpoint: the running daemon's advertised endpoint
    res = gw.cli("export-wg", "tablet", "--no-qr", "--interface", gw.iface, "--out",
                 str(tmp / "tablet.conf"))
    assert res.returncode == 0, res.stderr
    assert "is a private address, reachable from this LAN only" in res.stderr
    conf = (tmp / "tablet.conf").read_text()
    assert wg_quick_values(conf)["Endpoint"] == [f"{gw.ip}:{gw.port}"]
    addr = wg_quick_values(conf)["Address"][0]
    t0 = time.monotonic()
    lab.lan.wait(lambda: addr in gw.ns.run(["wg", "show", gw.iface, "allowed-ips"]).stdout,
                 "the running daemon to add the device", 10)
    picked = time.monotonic() - t0
    t0 = time.monotonic()
    device = PlainWgDevice.start(lab.tablet.ns, conf, tmp)
    try:
        took = time.monotonic() - t0 + wait_reply(lab.tablet, gw.mesh_v4, 15)
        print(f"\nexport-wg: a running daemon adds an exported device after {picked:.2f} s; "
              f"the device answers {took:.2f} s after it starts")
        assert tcp_echo(lab.tablet, gw.mesh_v4) == "echo:hello"
        # removed: the gateway drops its peer (and the session) within the poll interval
        res = gw.cli("export-wg", "--remove", "tablet")
        assert res.returncode == 0, res.stderr
        lab.lan.wait(lambda: addr not in gw.ns.run(["wg", "show", gw.iface,
                                                    "allowed-ips"]).stdout,
                     "the removed device's peer to go", 10)
        assert not lab.tablet.ns.ping(gw.mesh_v4, count=2, wait=1.0)
    finally:
        device.close()
    # the phone is untouched by the tablet's coming and going
    assert lab.phone.ns.ping(gw.mesh_v4, count=1, wait=1.0)


def test_a_devices_traffic_is_judged_by_the_gateways_policies(lab: Lab) -> None:
    """`deny tcp 7007` in the gateway's services/global.policy (read live) stops the device's
    TCP to it; ICMP still passes (docs/policy.md); removing the file lets TCP through again."""
    gw, phone = lab.gw, lab.phone
    rules = gw.cfg / "services" / "global.policy"
    rules.parent.mkdir(mode=0o700, exist_ok=True)
    rules.write_text(f"deny tcp {ECHO_PORT}\n")
    try:
        lab.lan.wait(lambda: tcp_echo(phone, gw.mesh_v4) != "echo:hello",
                     "the gateway's policy to stop the device's TCP", 15)
        assert phone.ns.ping(gw.mesh_v4, count=2, wait=1.0)
        report = gw.cli("policy", "--interface", gw.iface)
        assert f"deny tcp {ECHO_PORT}" in report.stdout, report.stdout + report.stderr
    finally:
        rules.unlink()
    lab.lan.wait(lambda: tcp_echo(phone, gw.mesh_v4) == "echo:hello",
                 "the device's TCP once the rule is gone", 15)
