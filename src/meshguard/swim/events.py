"""What the SWIM core returns: datagrams to send and membership events.

Every event carries the member's verified, signed record.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshguard.sansio import SendDatagram
from meshguard.wire.gossip import NodeRecord


@dataclass(frozen=True, slots=True)
class MemberUp:
    record: NodeRecord


@dataclass(frozen=True, slots=True)
class MemberUpdated:
    record: NodeRecord


@dataclass(frozen=True, slots=True)
class MemberDown:
    record: NodeRecord
    reason: str  # "dead" | "left" | "untrusted"


Action = SendDatagram | MemberUp | MemberUpdated | MemberDown
