"""meshguard: a decentralized, serverless, WireGuard-compatible mesh VPN daemon."""

__version__ = "0.1.0"
