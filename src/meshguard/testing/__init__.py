"""Test doubles: manual clock, seeded randomness, simulated network."""
