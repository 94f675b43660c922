"""A peer's round-trip time, measured on its handshakes (sans-IO, `now` given by the Device).

Every completed handshake is one sample of the end-to-end round trip, whatever path the
messages took (direct, or through a relay: nat/relay.py):

* the initiator times its initiation sent -> the response to that very initiation consumed
  (handshake.py `_receive_response`; a response to an older or unknown index is stale and
  never reaches the sample);
* the responder times its response sent (the `next` keypair's `created`) -> the first
  authenticated transport message under that session, which the initiator sends at once
  (queued data or a keepalive) and which promotes `next` to `current` (device.py
  `note_received`, run once per batch by every data path, so no per-packet cost).

Only messages that authenticate and answer a handshake this device started or answered make
a sample: a replayed response finds no initiation in flight, a replayed transport message is
refused by the replay window (and `next` was promoted already), a replayed initiation is
refused by its TAI64N. A sample above MAX_SAMPLE (the initiator's first message was lost and
a later one came instead) is not a round trip and is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshguard.wireguard.constants import REKEY_TIMEOUT

# a longer "round trip" means the initiator's first message was lost (it retransmits an
# initiation after REKEY_TIMEOUT anyway)
MAX_SAMPLE = REKEY_TIMEOUT
# weight of a new sample: handshakes come every two minutes or so, so the smoothed value
# follows a new path within a few handshakes (the path prober's RFC 6298 weight is 1/8)
WEIGHT = 0.25


@dataclass(slots=True)
class HandshakeRtt:
    """The handshake RTT of one peer: the last sample, the smoothed value, how many."""

    last: float | None = None
    smoothed: float | None = None
    samples: int = 0
    sent_at: float = float("-inf")  # when the initiation in flight was sent

    def sample(self, rtt: float) -> bool:
        """Take one round trip (seconds); False (and nothing changes) if it is none."""
        if not 0.0 <= rtt <= MAX_SAMPLE:
            return False
        self.last = rtt
        s = self.smoothed
        self.smoothed = rtt if s is None else (1.0 - WEIGHT) * s + WEIGHT * rtt
        self.samples += 1
        return True


__all__ = ["MAX_SAMPLE", "WEIGHT", "HandshakeRtt"]
