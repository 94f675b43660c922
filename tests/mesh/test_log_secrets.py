"""No secret key reaches a log line along the protocol paths, in virtual time.

Three members join, handshake (one of them under load: cookie replies, then mac2), carry
traffic both ways, re-key, lose a member from trust and another to death. Every log record at
DEBUG, and every event the cores hand the shell (the daemon logs those as `event: ...` at
DEBUG, daemon/mesh_daemon.py), is formatted as a text line and as a JSON line
(daemon/log_format.py, without its secret filter: this is about what the code logs). No
private key, handshake secret or session key of any member, harvested from the Devices after
every phase, may appear in any encoding. The real daemons and the CLI are checked the same
way in tests/daemon/test_log_secrets_netns.py.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator

import pytest

from meshguard.daemon.log_format import JsonFormatter, TextFormatter
from meshguard.wireguard.actions import SendDatagram, WriteTun
from meshguard.wireguard.device import Device

from .helpers import Net, SimNode, joined_pair


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    root = logging.getLogger()
    handler, level = Records(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def encodings(secret: bytes) -> list[str]:
    """The test's own list of what a leak would look like (not log_format's)."""
    std = base64.b64encode(secret).decode()
    url = base64.urlsafe_b64encode(secret).decode()
    return [std[:40], url[:40], secret.hex(), secret.hex().upper(), repr(secret)[2:-1]]


def device_of(sn: SimNode) -> Device:
    dev = sn.node.device
    assert isinstance(dev, Device)
    return dev


def harvest(nodes: list[SimNode], into: dict[bytes, str]) -> None:
    """Every secret the members hold right now, named for the failure message."""
    for sn in nodes:
        into[sn.ident.seed] = f"{sn.name} identity seed"
        dev = device_of(sn)
        assert dev.private_key is not None
        into[dev.private_key.raw] = f"{sn.name} WireGuard private key"
        for peer in dev.peers:
            if peer.static_static:
                into[peer.static_static] = f"{sn.name} static-static DH"
            st = peer.initiator_state
            if st is not None:
                into[st.ephemeral.raw] = f"{sn.name} handshake ephemeral"
                into[st.ck] = f"{sn.name} handshake chaining key"
            for kp in peer.keypairs.all():
                into[kp.send.key] = f"{sn.name} session send key"
                into[kp.receive.key] = f"{sn.name} session receive key"


class Recorder(Net):
    """The mesh of tests/mesh/helpers.py; every event is logged as the daemon logs it."""

    def run_actions(self, sn: SimNode, actions: list[object]) -> None:
        for a in actions:
            if not isinstance(a, SendDatagram | WriteTun):
                logging.getLogger("meshguard.daemon").debug("event: %s", a)
        super().run_actions(sn, actions)


def test_no_key_of_any_handshake_path_reaches_a_log_line(records: Records) -> None:
    net = Recorder(21)
    a = net.add("a", "192.0.2.1")
    b = net.add("b", "192.0.2.2", under_load_threshold=0)  # always under load: cookies
    c = net.add("c", "192.0.2.3", rekey_after_time=20.0)
    members = [a, b, c]
    for x in members:
        for y in members:
            if x is not y:
                x.trust.keys.add(y.key)
    secrets: dict[bytes, str] = {}
    net.join(a, [])
    for n in (b, c):
        net.join(n, [a])
    for _ in range(12):  # handshakes, cookie replies and mac2 retries, first traffic
        net.run(1.0)
        harvest(members, secrets)
    for x in members:
        for y in members:
            if x is not y:
                assert y.node.wg_key in x.node.peers, f"{x.name} lacks {y.name}"
                y.tun.clear()
                pkt = net.send_ip(x, y)
                net.run(0.5)
                assert pkt in y.tun, f"{x.name} -> {y.name}"
    assert device_of(b).counters.cookie_replies_sent > 0  # the cookie path was taken
    sessions = sum(k.endswith("session send key") for k in secrets.values())
    for _ in range(6):  # c re-keys every 20 s
        net.run(5.0)
        net.send_ip(c, a)
        harvest(members, secrets)
    assert sum(k.endswith("session send key") for k in secrets.values()) > sessions
    a.trust.keys.discard(b.key)  # trust removal: the tunnel goes
    net.run_actions(a, a.node.set_trust(a.trust, net.clock.wall()))
    net.down.add(c.ep)  # death
    net.run(40.0)
    harvest(members, secrets)
    assert c.node.wg_key not in a.node.peers and b.node.wg_key not in a.node.peers

    assert len(records.records) > 20
    text, js = TextFormatter(), JsonFormatter()
    lines = []
    for r in records.records:
        lines.append(text.format(r))
        doc = json.loads(js.format(r))
        lines.append(json.dumps(doc))
        lines.extend(str(v) for v in doc.values())  # JSON-decoded: escapes undone
    blob = "\n".join(lines)
    assert "tunnel to" in blob and "event: PeerUp" in blob
    assert len(secrets) > 20
    for secret, what in secrets.items():
        for enc in encodings(secret):
            assert enc not in blob, f"{what} in the log: {enc}"


def test_the_check_finds_a_key_that_is_logged(records: Records) -> None:
    """The search above can fail: a session key logged in any of the encodings is found."""
    _, a, b = joined_pair(22)
    secrets: dict[bytes, str] = {}
    harvest([a, b], secrets)
    session = next(s for s, what in secrets.items() if what.endswith("session send key"))
    log = logging.getLogger("meshguard.daemon")
    for i, enc in enumerate(encodings(session)):
        log.debug("keypair %d: %s", i, enc + "tail")
    blob = "\n".join(TextFormatter().format(r) for r in records.records)
    assert all(enc in blob for enc in encodings(session))
