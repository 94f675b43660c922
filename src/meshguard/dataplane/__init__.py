"""The batched TUN <-> UDP fast path."""
