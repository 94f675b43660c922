"""Sans-IO WireGuard protocol core."""
