"""The Prometheus metric families of one `status` report (daemon/status.py `build_status`).

Pure: a report and the wall clock in, prometheus_client metric families out, so the metrics
and `meshguard status` come from the same data and never disagree. Every counter of the
report reaches exactly one metric: the gossip and relay counters their own metrics, every
other one `meshguard_drops_total{reason}` (input refused or thrown away),
`meshguard_errors_total{error}` (local failures) or `meshguard_events_total{event}`, labelled
with the counter's name in `status --json`. Every name is documented in docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from meshguard import __version__
from meshguard.wire.control import MemberStatus, StatusReport
from meshguard.wire.gossip import JOIN, TYPE_NAMES

Kind = Literal["gauge", "counter"]
CounterClass = Literal["drop", "error", "event"]


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric: its sample name, type, labels and meaning (docs/metrics.md)."""

    name: str
    kind: Kind
    labels: tuple[str, ...]
    help: str


PEER = ("peer", "key")  # the member's name (or its short key when it has none), short key

SPECS: tuple[MetricSpec, ...] = (
    MetricSpec("meshguard_build_info", "gauge", ("version", "mode", "interface"),
               "Always 1: the daemon's version, mode (userspace or kernel) and interface."),
    MetricSpec("meshguard_start_time_seconds", "gauge", (),
               "When the daemon started, in unix seconds."),
    MetricSpec("meshguard_members", "gauge", ("state",),
               "Members this node knows, by SWIM state (alive, suspect, dead, left)."),
    MetricSpec("meshguard_peers", "gauge", ("path",),
               "Members with a WireGuard tunnel, by path (direct or relayed)."),
    MetricSpec("meshguard_peer_info", "gauge",
               (*PEER, "identity_key", "mesh_ipv4", "state", "path"),
               "Always 1, one per member: its keys, mesh address, state and path."),
    MetricSpec("meshguard_peer_handshake_age_seconds", "gauge", PEER,
               "Seconds since the last WireGuard handshake with the member."),
    MetricSpec("meshguard_peer_receive_bytes_total", "counter", PEER,
               "WireGuard bytes received from the member's tunnel."),
    MetricSpec("meshguard_peer_transmit_bytes_total", "counter", PEER,
               "WireGuard bytes sent into the member's tunnel."),
    MetricSpec("meshguard_peer_rtt_seconds", "gauge", PEER,
               "Smoothed round-trip time of the member's direct path (path probes)."),
    MetricSpec("meshguard_peer_path_mtu_bytes", "gauge", PEER,
               "Path MTU to the member found by path MTU discovery."),
    MetricSpec("meshguard_drops_total", "counter", ("reason",),
               "Input refused or thrown away, by reason (the status counter's name)."),
    MetricSpec("meshguard_errors_total", "counter", ("error",),
               "Local failures (sockets, TUN, timers), by the status counter's name."),
    MetricSpec("meshguard_events_total", "counter", ("event",),
               "Every other status counter, by its name."),
    MetricSpec("meshguard_gossip_messages_received_total", "counter", ("type",),
               "SWIM messages accepted from members (MAC verified), by message type."),
    MetricSpec("meshguard_gossip_messages_sent_total", "counter", ("type",),
               "SWIM messages sent, by message type."),
    MetricSpec("meshguard_relay_forwarded_packets_total", "counter", (),
               "WireGuard datagrams this node relayed for other members."),
    MetricSpec("meshguard_relay_forwarded_bytes_total", "counter", (),
               "WireGuard bytes this node relayed for other members."),
    MetricSpec("meshguard_relay_sent_packets_total", "counter", (),
               "WireGuard datagrams this node sent through a relay."),
    MetricSpec("meshguard_relay_sent_bytes_total", "counter", (),
               "WireGuard bytes this node sent through a relay."),
    MetricSpec("meshguard_relay_received_packets_total", "counter", (),
               "WireGuard datagrams this node received through a relay."),
    MetricSpec("meshguard_relay_received_bytes_total", "counter", (),
               "WireGuard bytes this node received through a relay."),
    MetricSpec("meshguard_scrapes_total", "counter", ("result",),
               "HTTP requests to the metrics port, by result (ok, or why it was refused)."),
)
SPEC = {s.name: s for s in SPECS}

MEMBER_STATES = ("alive", "suspect", "dead", "left")
PATHS = ("direct", "relayed")
# counters with a metric of their own: metric name -> status counter
RELAY_COUNTERS = {
    "meshguard_relay_forwarded_packets_total": "relay_forwarded",
    "meshguard_relay_forwarded_bytes_total": "relay_forwarded_bytes",
    "meshguard_relay_sent_packets_total": "relay_tx",
    "meshguard_relay_sent_bytes_total": "relay_tx_bytes",
    "meshguard_relay_received_packets_total": "relay_rx",
    "meshguard_relay_received_bytes_total": "relay_rx_bytes",
}
SCRAPE_RESULTS = ("ok", "bad_request", "not_found", "bad_method", "too_large", "timeout",
                  "busy", "failed")  # daemon/metrics_exporter.py
JOINS_ACCEPTED = "swim_joins_answered"  # a Join is the stranger's first packet: no MAC to check

# How a counter's name says it is a drop (docs/metrics.md#drops-errors-and-events): one of
# these words between underscores, or one of the phrases anywhere in it.
DROP_WORDS = frozenset({
    "bad", "garbage", "malformed", "replay", "replayed", "unsolicited", "unexpected",
    "unknown", "untrusted", "foreign", "stale", "flood", "overflow", "wrong", "unmatched",
    "unanswered", "formerr", "limited", "full", "mismatch", "conflict", "dropped", "drops",
    "equivocation", "ignored",
})
DROP_PHRASES = (
    "not_member", "non_member", "not_admitted", "not_gossip", "not_a_probe", "not_current",
    "not_forwarded", "from_self", "too_old", "from_future", "over_budget", "no_route",
    "no_key", "proxy_no_peer", "no_private_key", "no_session", "gave_up", "key_taken",
    "vouch_revoked", "after_done", "from_elsewhere", "tcp_refused", "reflexive_refused",
)
ERROR_PHRASES = ("send_refused", "would_block")


def counter_class(name: str) -> CounterClass:
    """Which of drops, errors and events a status counter belongs to."""
    words = name.split("_")
    if words[-1] == "errors" or any(p in name for p in ERROR_PHRASES):
        return "error"
    if DROP_WORDS.intersection(words) or any(p in name for p in DROP_PHRASES):
        return "drop"
    return "event"


def _family(name: str) -> GaugeMetricFamily | CounterMetricFamily:
    s = SPEC[name]
    if s.kind == "counter":
        return CounterMetricFamily(name, s.help, labels=s.labels)
    return GaugeMetricFamily(name, s.help, labels=s.labels)


def peer_labels(reports: Iterable[MemberStatus]) -> dict[str, tuple[str, str]]:
    """(peer, key) labels per identity key: the member's name, or its short key."""
    return {m.identity_key: (m.name or m.identity_key[:8], m.identity_key[:8])
            for m in reports}


def metric_families(report: StatusReport, wall: float,
                    scrapes: Mapping[str, int] | None = None) -> list[Metric]:
    """Every metric of SPECS for one report; `wall` is the time the report was built,
    `scrapes` the metrics port's request counts by result."""
    fam = {s.name: _family(s.name) for s in SPECS}
    fam["meshguard_build_info"].add_metric([__version__, report.mode, report.interface], 1)
    fam["meshguard_start_time_seconds"].add_metric([], report.started_at)
    for result in SCRAPE_RESULTS:
        fam["meshguard_scrapes_total"].add_metric([result], (scrapes or {}).get(result, 0))
    _members(report.members, wall, fam)
    _counters(report.counters, fam)
    return list(fam.values())


def _members(members: Iterable[MemberStatus], wall: float,
             fam: Mapping[str, GaugeMetricFamily | CounterMetricFamily]) -> None:
    members = tuple(members)
    labels = peer_labels(members)
    states = dict.fromkeys(MEMBER_STATES, 0)
    paths = dict.fromkeys(PATHS, 0)
    for m in members:
        states[m.state] = states.get(m.state, 0) + 1
        lab = list(labels[m.identity_key])
        fam["meshguard_peer_info"].add_metric(
            [*lab, m.identity_key, m.mesh_ipv4, m.state, m.path if m.tunnel else "none"], 1)
        if not m.tunnel:
            continue
        paths[m.path] = paths.get(m.path, 0) + 1
        if m.last_handshake:
            fam["meshguard_peer_handshake_age_seconds"].add_metric(
                lab, max(0.0, wall - m.last_handshake))
        fam["meshguard_peer_receive_bytes_total"].add_metric(lab, m.rx_bytes)
        fam["meshguard_peer_transmit_bytes_total"].add_metric(lab, m.tx_bytes)
        if m.rtt_ms is not None:
            fam["meshguard_peer_rtt_seconds"].add_metric(lab, m.rtt_ms / 1000)
        if m.mtu is not None:
            fam["meshguard_peer_path_mtu_bytes"].add_metric(lab, m.mtu)
    for state, n in states.items():
        fam["meshguard_members"].add_metric([state], n)
    for path, n in paths.items():
        fam["meshguard_peers"].add_metric([path], n)


def _counters(counters: Mapping[str, int],
              fam: Mapping[str, GaugeMetricFamily | CounterMetricFamily]) -> None:
    used: set[str] = set()
    for metric, key in RELAY_COUNTERS.items():
        fam[metric].add_metric([], counters.get(key, 0))
        used.add(key)
    for t, type_name in sorted(TYPE_NAMES.items()):
        rx = JOINS_ACCEPTED if t == JOIN else f"swim_rx_{type_name}"
        tx = f"swim_tx_{type_name}"
        fam["meshguard_gossip_messages_received_total"].add_metric(
            [type_name], counters.get(rx, 0))
        fam["meshguard_gossip_messages_sent_total"].add_metric([type_name], counters.get(tx, 0))
        used.update((rx, tx))
    target = {"drop": "meshguard_drops_total", "error": "meshguard_errors_total",
              "event": "meshguard_events_total"}
    for key in sorted(counters):
        if key not in used:
            fam[target[counter_class(key)]].add_metric([key], counters[key])
