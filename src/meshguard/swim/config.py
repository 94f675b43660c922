"""SWIM knobs with their defaults and the reason for each, and presets for three networks.

Time is in seconds. N is the number of members a node currently counts alive (itself included).
The defaults are the LAN preset (`lan()`, the daemon's configuration); `wan()` and `local()`
change only what the network's round trip, loss and cost call for.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SwimConfig:
    # One probe per period (SWIM paper, section 3.1). 1 s is memberlist's LAN default: a
    # failure is noticed within a few seconds while background load stays at ~2 packets/s/node.
    probe_interval: float = 1.0
    # Direct ack deadline before indirect probes go out. Must exceed a round trip (500 ms is
    # memberlist's LAN default and leaves half the period for the indirect round).
    probe_timeout: float = 0.5
    # Members asked to probe indirectly (SWIM's k). 3 makes a false suspicion under 10% loss
    # need ~4 independent path failures at once (memberlist IndirectChecks = 3).
    indirect_checks: int = 3
    # Lifeguard local health multiplier cap: a node whose own probes keep failing (it is the
    # slow one) probes up to (1 + awareness_max) times less often (memberlist uses 8).
    awareness_max: int = 8
    # Suspicion timeout = suspicion_mult * max(1, log10 N) * probe_interval at the least
    # (Lifeguard, memberlist SuspicionMult = 4): long enough for the suspect to hear the rumour
    # and refute it, which takes O(log N) periods of gossip.
    suspicion_mult: float = 4.0
    # Without independent confirmations the timeout starts at this multiple of the minimum and
    # shrinks towards the minimum as other members confirm (Lifeguard dynamic suspicion).
    suspicion_max_mult: float = 6.0
    # Piggyback retransmit limit = retransmit_mult * ceil(log10(N + 1)) (memberlist
    # RetransmitMult = 4): enough transmissions that an epidemic reaches everyone w.h.p.
    retransmit_mult: int = 4
    # Dead and left members are forgotten after this long (their endpoint is kept in a bounded
    # graveyard for re-contact). 2 minutes lets the death notice finish spreading first.
    dead_reap_after: float = 120.0
    # How many reaped endpoints to remember for re-contact (bounds memory).
    graveyard_size: int = 64
    # Every recontact_interval one dead member, graveyard endpoint or seed not known alive gets
    # a Join, so that a healed partition merges by itself.
    recontact_interval: float = 10.0
    # A joining node retries its seeds with exponential backoff, from join_retry_first up to
    # join_retry_max, until one answers. The first retries come soon: members started together
    # (a boot, a test bed) often send their Join before the seed's port is bound, and that
    # Join is simply lost; 125 ms, 250 ms, 500 ms then 1 s, 2 s, ... costs three extra Joins
    # at most and saves the first second (docs/performance.md#start-up). join_retry_min is
    # the retry interval a seed expects: it answers one member's Join at most once per half
    # of it.
    join_retry_first: float = 0.125
    join_retry_min: float = 1.0
    join_retry_max: float = 30.0
    # Anti-entropy: every sync_interval (+-50% jitter) pull the state of one random member. The
    # request carries a digest of our view; an equal digest costs one small packet each way.
    sync_interval: float = 10.0
    # Records learnt by anti-entropy also ride in spare piggyback room (after every urgent
    # update), ceil(log10(N + 1)) times each; at most this many wait at once (bounds memory,
    # ~200 B each).
    quiet_queue_cap: int = 256
    # Upper bound on SyncData packets sent per request (~7 records each).
    sync_max_packets: int = 200
    # Verifications of self-introducing strangers (Join, or a first packet carrying the
    # sender's record) allowed per second, with a burst: a flood of self-signed joins costs at
    # most ~200 x 60 us = 12 ms of CPU per second, while a 1,000-node mesh still forms quickly.
    join_rate: float = 200.0
    join_burst: float = 400.0
    # Each source address may cost at most this many verifications per second (with a burst),
    # before the global budget above: junk joins from one address cannot close a seed to the
    # real joins of others.
    join_source_rate: float = 2.0
    join_source_burst: float = 8.0
    # Leave notices sent directly to this many members (the rest hear it by gossip).
    leave_fanout: int = 4
    # Freshness. An incarnation is the wall-clock millisecond at which the record was signed
    # (plus one per refutation), so it is also a signed time. Every node signs its record again
    # every record_refresh seconds, and a record older than record_max_age (or as far in the
    # future) is refused: a captured record (with a WireGuard key rotated away since) cannot be
    # replayed to a node that has forgotten the member, or to one started afresh. Members'
    # clocks must agree to within record_max_age - record_refresh.
    record_refresh: float = 600.0
    record_max_age: float = 1800.0
    # The trust store is asked again about every member this often (certificates expire); a
    # member no longer admitted loses every gossip right at once.
    admission_recheck: float = 60.0
    # Two Dead notices from distinct members kill at once; one only starts a suspicion (which
    # the subject refutes if it is alive), so no single member can evict another.
    dead_quorum: int = 2

    def retransmit_limit(self, n: int) -> int:
        return self.retransmit_mult * max(1, math.ceil(math.log10(n + 1)))

    def suspicion_min(self, n: int) -> float:
        return self.suspicion_mult * max(1.0, math.log10(max(n, 1))) * self.probe_interval

    def suspicion_max(self, n: int) -> float:
        return self.suspicion_max_mult * self.suspicion_min(n)

    def expected_confirmations(self, n: int) -> int:
        k = int(self.suspicion_mult) - 2
        return k if n - 2 >= k else 0

    def detection_bound(self, n: int) -> float:
        """Worst-case time from a crash until the first Dead declaration is possible.

        The member probing the crashed node notices within one period (plus the period in
        which it happened to be probing someone else); its suspicion fires after at most
        suspicion_max(n). Every member then hears the death by gossip; `spread_bound` covers it.
        """
        return 2 * self.probe_interval + self.suspicion_max(n)

    def join_bound(self, n: int) -> float:
        """Time after the last join until every member knows every other.

        The joiner pulls the seed's state at once, then random members' states after gaps of
        1, 1, 2, 2, 4, 4, ... periods; records also ride in spare piggyback room. Each pull
        round at least doubles the set of members that know a given record (pull epidemic,
        O(log2 N) rounds); we allow 2 * ceil(log2 N) periods plus one regular sync interval.
        """
        return 2 * math.ceil(math.log2(max(n, 2))) * self.probe_interval + self.sync_interval

    def heal_bound(self, n: int) -> float:
        """Time after a partition ends until both sides agree again.

        Every node re-contacts a dead member, a reaped endpoint or a seed of the other side
        within 1.5 * recontact_interval; the answer carries the accusation, the subject refutes,
        and refutations spread by piggyback and anti-entropy pulls (1.5 * sync_interval apart)
        in O(log N) rounds: we allow three pull rounds plus the broadcast spread bound.
        """
        return 1.5 * self.recontact_interval + 3 * 1.5 * self.sync_interval + self.spread_bound(n)

    def spread_bound(self, n: int) -> float:
        """Generous bound for a broadcast to reach every member: retransmit limit periods."""
        return self.retransmit_limit(n) * self.probe_interval * 2


def lan() -> SwimConfig:
    """Members on one site or one cloud region: round trips of a few milliseconds, rare loss.

    The defaults of `SwimConfig` (memberlist's DefaultLANConfig values, see each field). The
    daemon runs with this preset.
    """
    return SwimConfig()


def wan() -> SwimConfig:
    """Members spread over the internet: round trips up to hundreds of milliseconds, bursts
    of loss, links that may be metered.

    - probe_interval 5 s: each probe crosses the internet; probing a fifth as often cuts the
      background load five-fold and gives transient loss time to pass (memberlist's WAN value).
    - probe_timeout 3 s: a round trip plus queueing on a congested path may take seconds; a
      shorter timeout would send indirect probes on every slow answer.
    - suspicion_mult 6: a refutation needs more time to reach the suspect and come back over
      lossy links (memberlist's WAN value); it also allows k = 4 confirmations.
    - sync_interval 30 s: a state pull may be many packets; over the internet it is worth
      doing less often (piggyback still carries every update).
    - recontact_interval 30 s: a partition between sites lasts minutes rather than seconds; a
      Join every 30 s still merges the sides soon after it heals.
    """
    return dataclasses.replace(
        SwimConfig(),
        probe_interval=5.0,
        probe_timeout=3.0,
        suspicion_mult=6.0,
        sync_interval=30.0,
        recontact_interval=30.0,
    )


def local() -> SwimConfig:
    """Members on one host (containers, network namespaces, tests): sub-millisecond round
    trips, no loss, no independent paths.

    - probe_timeout 0.2 s: loopback answers in microseconds; a member that has not answered
      in 200 ms is stopped or overloaded (memberlist's local value).
    - indirect_checks 1: every path runs through the same host and kernel, so more indirect
      probes would not add an independent path.
    - retransmit_mult 2: nothing is lost, so two transmissions per update are enough.
    - suspicion_mult 3: the suspect hears the rumour within a period; failures are detected
      sooner (memberlist's local value).
    - sync_interval 5 s and recontact_interval 5 s: pulls and re-contacts cost nothing on one
      host, and a restarted member is merged back sooner.
    """
    return dataclasses.replace(
        SwimConfig(),
        probe_timeout=0.2,
        indirect_checks=1,
        retransmit_mult=2,
        suspicion_mult=3.0,
        sync_interval=5.0,
        recontact_interval=5.0,
    )


PRESETS: dict[str, Callable[[], SwimConfig]] = {"lan": lan, "wan": wan, "local": local}

DEFAULT_CONFIG = lan()
