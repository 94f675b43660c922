"""Byte codecs: WireGuard, gossip, STUN, relay and control formats (no state, no crypto)."""
