"""The wg-quick configuration text of a plain WireGuard device (`meshguard export-wg`).

The format is wg-quick(8)'s: an `[Interface]` section with the device's own key, address and
resolver, and one `[Peer]` section for the gateway member it reaches the mesh through
(docs/policy.md#plain-wireguard-devices). wg-quick, the WireGuard apps for phones (which scan
it as a QR code) and `wg-quick strip` followed by `wg setconf` all read this text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

KEEPALIVE = 25  # seconds: the usual value; a phone behind NAT keeps its mapping open


@dataclass(frozen=True, slots=True)
class WgQuickConfig:
    private_key: str  # base64, the device's X25519 private key
    address: str  # the device's address with its prefix length, e.g. "10.98.7.1/32"
    peer_public_key: str  # base64, the gateway member's WireGuard key
    preshared_key: str  # base64
    endpoint: str  # "host:port" or "[v6]:port"
    allowed_ips: Sequence[str]
    dns: Sequence[str] = ()  # resolver addresses, then search domains (wg-quick's DNS =)
    keepalive: int = KEEPALIVE
    comment: str = ""  # one line naming the device and its gateway

    def render(self) -> str:
        lines: list[str] = []
        if self.comment:
            lines.append(f"# {self.comment}")
        lines += ["[Interface]", f"PrivateKey = {self.private_key}", f"Address = {self.address}"]
        if self.dns:
            lines.append(f"DNS = {', '.join(self.dns)}")
        lines += ["", "[Peer]", f"PublicKey = {self.peer_public_key}",
                  f"PresharedKey = {self.preshared_key}", f"Endpoint = {self.endpoint}",
                  f"AllowedIPs = {', '.join(self.allowed_ips)}"]
        if self.keepalive:
            lines.append(f"PersistentKeepalive = {self.keepalive}")
        return "\n".join(lines) + "\n"
