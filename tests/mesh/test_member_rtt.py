"""The RTT `status` shows per member (mesh/member_rtt.py, daemon/status.py): the path
probes' for a direct path, the handshakes' end-to-end value for a relayed one (never the
stale direct value, never the relay hop's), with the relay hop's RTT beside it."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey, X25519PublicKey
from meshguard.daemon.daemon_config import DaemonConfig
from meshguard.daemon.status import build_status
from meshguard.mesh.member_rtt import member_rtt
from meshguard.mesh.node import MemberView, MeshNode
from meshguard.mesh.path_probe import PathProber, PathState
from meshguard.mesh.wg_backend import DeviceBackend
from meshguard.nat.holepunch import PunchFailed
from meshguard.nat.relay import Relay
from meshguard.testing.rng import SeededRng
from meshguard.wire.control import StatusReport
from meshguard.wireguard.device import Device

from .helpers import B_EP, WALL, setup

RELAY_HOP = 0.02  # seconds, this node -> the relay
END_TO_END = 0.055  # seconds, this node -> the relay -> B, from B's handshakes
STALE_DIRECT = 0.004  # what the prober measured while B was direct


class _NoCounters:
    def counters(self) -> dict[str, int]:
        return {}


def _relayed() -> tuple[MeshNode, MemberView, Device]:
    """This node, its member B relayed through R (punch failed), a prober that probed B while
    it was direct, and a userspace device whose handshakes with B measured END_TO_END."""
    node, ms, _be, _dev, _bkey, b = setup()
    rkey = Ed25519PrivateKey(b"\x23" * 32)
    r = ms.view[rkey.public_key.raw]
    ms.view[r.identity_key] = replace(r, wg_key=X25519PrivateKey(b"\x42" * 32).public_key.raw)
    node.relay = Relay(node.identity_key, X25519PrivateKey(b"\x41" * 32),
                       cookie_secret=b"\x03" * 32, behind_nat=True)
    node.relay.rtt[r.identity_key] = RELAY_HOP
    node.reconcile(WALL)
    assert b.wg_key is not None
    prober = PathProber(SeededRng(2), X25519PrivateKey(b"\x43" * 32), node.identity_key)
    prober.paths[b.wg_key] = PathState(B_EP, 1500, state="done", mtu=1420, srtt=STALE_DIRECT)
    node.probes = prober
    dev = Device(SeededRng(3), X25519PrivateKey(b"\x44" * 32))
    assert dev.add_peer(X25519PublicKey(b.wg_key)).rtt.sample(END_TO_END)
    return node, b, dev


def _fail_punch(node: MeshNode, b: MemberView) -> None:
    node._punch_actions([PunchFailed(b.identity_key)], 5.0, WALL + 5)
    assert b.wg_key is not None and node.path_of(b.wg_key)[0] == "relayed"
    assert node.probes is not None
    node.probes.paths[b.wg_key] = replace(node.probes.paths[b.wg_key], state="relayed",
                                          endpoint=None, mtu=None)


def _status_of(node: MeshNode, b: MemberView) -> dict[str, object]:
    rep = build_status(cfg=DaemonConfig("mg0", 51821, []), node=node,
                       membership=_NoCounters(),  # type: ignore[arg-type]
                       name=None, started_at=0.0, wall=WALL + 6, kernel_stats=None,
                       runner_counters={}, dns_counters=None)
    doc = rep.to_json()
    assert StatusReport.from_json(doc) == rep
    assert b.wg_key is not None
    key = base64.b64encode(b.wg_key).decode()
    (m,) = [m for m in doc["members"] if m["wireguard_key"] == key]  # type: ignore[attr-defined]
    assert m["tunnel"]
    return dict(m)


def test_a_direct_member_shows_the_probes_rtt() -> None:
    node, b, dev = _relayed()
    node.backend = DeviceBackend(dev)
    assert b.wg_key is not None
    r = member_rtt(node, b.wg_key, b.identity_key, relayed=False)
    assert (r.rtt, r.source, r.relay_rtt, r.mtu) == (STALE_DIRECT, "probe", None, 1420)


def test_a_relayed_member_shows_the_end_to_end_rtt_of_its_handshakes() -> None:
    node, b, dev = _relayed()
    node.backend = DeviceBackend(dev)
    _fail_punch(node, b)
    m = _status_of(node, b)
    assert m["path"] == "relayed"
    assert m["rtt_ms"] == pytest.approx(END_TO_END * 1000)
    assert m["rtt_source"] == "handshake"
    assert m["relay_rtt_ms"] == pytest.approx(RELAY_HOP * 1000)
    assert m["mtu"] is None


def test_without_handshake_rtts_a_relayed_member_has_none() -> None:
    # kernel mode: the backend has no handshake hook; the old direct srtt is not shown
    node, b, _ = _relayed()
    _fail_punch(node, b)
    m = _status_of(node, b)
    assert (m["rtt_ms"], m["rtt_source"]) == (None, None)
    assert m["relay_rtt_ms"] == pytest.approx(RELAY_HOP * 1000)


def test_a_direct_member_without_probe_samples_falls_back_to_handshakes() -> None:
    node, b, dev = _relayed()
    node.backend = DeviceBackend(dev)
    assert node.probes is not None and b.wg_key is not None
    node.probes.paths.clear()
    r = member_rtt(node, b.wg_key, b.identity_key, relayed=False)
    assert (r.rtt, r.source, r.relay_rtt) == (END_TO_END, "handshake", None)


def test_old_status_documents_without_the_new_fields_still_parse() -> None:
    node, b, dev = _relayed()
    node.backend = DeviceBackend(dev)
    _fail_punch(node, b)
    rep = build_status(cfg=DaemonConfig("mg0", 51821, []), node=node,
                       membership=_NoCounters(),  # type: ignore[arg-type]
                       name=None, started_at=0.0, wall=WALL + 6, kernel_stats=None,
                       runner_counters={}, dns_counters=None)
    doc = rep.to_json()
    for m in doc["members"]:  # type: ignore[attr-defined]
        del m["rtt_source"], m["relay_rtt_ms"]
    old = StatusReport.from_json(doc)
    assert all(m.rtt_source is None and m.relay_rtt_ms is None for m in old.members)

