"""Sans-IO NAT traversal core: STUN, hole punching, relays."""
