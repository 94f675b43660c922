"""WireGuard protocol constants.

Values and names follow the WireGuard paper (J. A. Donenfeld, "WireGuard: Next Generation Kernel
Network Tunnel", NDSS 2017), section 5.4 (messages) and section 6 (timers), table in 6.1.
"""

from __future__ import annotations

# Noise construction and WireGuard identifier (paper 5.4, "Protocol & Cryptography").
CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
LABEL_MAC1 = b"mac1----"
LABEL_COOKIE = b"cookie--"

# Paper section 6.1 (timer constants).
REKEY_AFTER_MESSAGES = 2**60
REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1
REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_ATTEMPT_TIME = 90.0
REKEY_TIMEOUT = 5.0
KEEPALIVE_TIMEOUT = 10.0
COOKIE_REFRESH_TIME = 120.0

# Jitter added to each handshake (re)transmission, paper 6.1: "up to 333 ms".
REKEY_TIMEOUT_JITTER_MAX = 0.333
# Paper 6.4: handshake attempts are retried for REKEY_ATTEMPT_TIME, i.e. this many times.
MAX_HANDSHAKE_ATTEMPTS = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)  # 18
# Paper 6.3: key material is zeroed after 3 * REJECT_AFTER_TIME without a new handshake.
ZERO_KEYS_AFTER = 3 * REJECT_AFTER_TIME
# Paper 6.2: the initiator of the current session re-keys on receive when the keypair is this
# old, so that the session does not expire while it is only receiving.
REKEY_ON_RECEIVE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
# Paper 6.5 ("new handshake after data sent and nothing received"):
NEW_HANDSHAKE_AFTER = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT

# Replay window (paper 5.4.6 refers to RFC 6479): ring of 64-bit blocks; the usable window is
# (blocks - 1) * 64 = 4032 counters, above the 2048 the paper asks for.
REPLAY_BLOCK_BITS = 64
REPLAY_RING_BLOCKS = 64
REPLAY_WINDOW = (REPLAY_RING_BLOCKS - 1) * REPLAY_BLOCK_BITS

# Defaults of local knobs (not from the paper; reasons given).
# An initiation from one peer is processed at most this often (wireguard-go uses 50/s): a peer
# replaying its own valid initiations cannot make us do unbounded DH work.
MAX_INITIATIONS_PER_PEER_PER_SECOND = 50
# Under load: more than this many handshake messages in one second make the device demand
# mac2 (cookies). One handshake costs about 0.2-0.3 ms of CPU in Python (4 X25519 + hashing),
# so 200/s keeps handshake work under ~6% of a core before cookies kick in.
UNDER_LOAD_HANDSHAKES_PER_SECOND = 200
# Once under load, stay there this long after the last over-threshold second (wireguard-go: 1 s).
UNDER_LOAD_HOLD_TIME = 1.0
# Under load, handshake messages with a valid mac2 are still limited per source address with
# a token bucket (wireguard-go's ratelimiter: 20 per second, bursts of 5), so a host that can
# receive cookies still cannot make us do unbounded DH work.
UNDER_LOAD_PER_SOURCE_RATE = 20.0
UNDER_LOAD_PER_SOURCE_BURST = 5
# Packets queued per peer while waiting for a handshake (wireguard-go: 128).
MAX_STAGED_PACKETS = 128
# A mac2 cookie received from a responder is used for this long (paper 5.4.7: the responder's
# secret changes every COOKIE_REFRESH_TIME, so an older cookie is worthless).
COOKIE_LIFETIME = COOKIE_REFRESH_TIME - 2 * REKEY_TIMEOUT
