"""docs/wire-format.md agrees with the codecs: layout tables, fixed sizes and type numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshguard.identity import certificate
from meshguard.mesh import demux
from meshguard.wire import gossip, holepunch, org, path_probe, policy_gossip, relay, stun
from meshguard.wire import wireguard as wg

DOCS = Path(__file__).resolve().parents[1] / "docs"

# heading prefix in docs/wire-format.md -> the codec's size of that fixed-size part
FIXED = {
    "Initiation": wg.INITIATION_SIZE,
    "Response": wg.RESPONSE_SIZE,
    "Cookie reply": wg.COOKIE_REPLY_SIZE,
    "Transport data": wg.TRANSPORT_HEADER_SIZE,
    "Gossip header": gossip.HEADER_LEN,
    "Node record": gossip.REC_HEAD_LEN,
    "Endpoint": gossip.EP_LEN,
    "Suspicion and death notice": gossip.ACCUSATION_LEN,
    "RelayData": relay.HEAD_LEN,
    "HolepunchRequest and HolepunchResponse": holepunch.HEAD_LEN,
    "Revocation item": org.REVOKE_ITEM_LEN,
    "Vouch item": org.VOUCH_ITEM_LEN,
    "PathProbe and PathProbeAck": path_probe.HEAD_LEN,
    "PolicyAnnounce item": policy_gossip.ANNOUNCE_ITEM_LEN,
    "PolicyChunkRequest": policy_gossip.REQUEST_LEN,
    "PolicyChunk": policy_gossip.CHUNK_HEAD_LEN,
}


def _sections(doc: Path) -> dict[str, list[str]]:
    """Heading text -> the lines under it, up to the next heading."""
    out: dict[str, list[str]] = {}
    current = ""
    for line in doc.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#{2,4}\s+(.*)", line)
        if m:
            current = m.group(1).strip()
            out[current] = []
        elif current:
            out[current].append(line)
    return out


def _layout(lines: list[str]) -> list[tuple[str, str, str]]:
    """(offset, size, field) rows of the first `| offset | size | field |` table."""
    rows: list[tuple[str, str, str]] = []
    in_table = False
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not in_table:
            in_table = cells[:3] == ["offset", "size", "field"]
            continue
        if not line.startswith("|"):
            break
        if set(cells[0]) <= {"-", ":"}:
            continue
        rows.append((cells[0], cells[1], cells[2]))
    return rows


def _fixed_total(rows: list[tuple[str, str, str]]) -> int:
    """Bytes of the leading rows with numeric offsets and sizes; offsets must be contiguous."""
    at = 0
    for off, size, field in rows:
        if not (off.isdigit() and size.isdigit()):
            break
        assert int(off) == at, f"field {field!r} at offset {off}, expected {at}"
        at += int(size)
    return at


def _heading_size(heading: str) -> int | None:
    m = re.search(r"(\d+)(?: bytes|-byte head(?:er)?)\)", heading)
    return int(m.group(1)) if m else None


def test_every_fixed_part_matches_its_codec() -> None:
    sections = _sections(DOCS / "wire-format.md")
    checked = set()
    for heading, lines in sections.items():
        rows = _layout(lines)
        if not rows:
            continue
        total = _fixed_total(rows)
        size = _heading_size(heading)
        if size is not None and "at least" not in heading:
            assert total == size, f"{heading}: the table adds up to {total}"
        for prefix, expected in FIXED.items():
            if heading.startswith(prefix + " ("):
                assert total == expected, f"{heading}: {total} bytes, the codec has {expected}"
                checked.add(prefix)
    assert checked == set(FIXED), f"no layout table for {set(FIXED) - checked}"


def test_join_padding_and_certificate_sizes() -> None:
    sections = _sections(DOCS / "wire-format.md")
    join = next(h for h in sections if h.startswith("Join ("))
    assert f"at least {gossip.JOIN_MIN_LEN} bytes" in join
    assert stun.HEADER_LEN == 20
    cert_rows = _layout(_sections(DOCS / "compatibility.md")["Certificates"])
    assert _fixed_total(cert_rows) == certificate.V1_LEN


def test_the_type_table_lists_every_type_the_demux_accepts() -> None:
    lines = _sections(DOCS / "wire-format.md")["Message types"]
    # WireGuard types are written in decimal, the gossip header's type byte in hex
    wireguard: set[int] = set()
    gossip_side: set[int] = set()
    for line in lines:
        m = re.match(r"\|\s*(0x[0-9A-Fa-f]{2}|\d)\s*\|", line)
        if m:
            (gossip_side if m.group(1).startswith("0x") else wireguard).add(int(m.group(1), 0))
    assert wireguard == {wg.MESSAGE_INITIATION, wg.MESSAGE_RESPONSE, wg.MESSAGE_COOKIE_REPLY,
                         wg.MESSAGE_TRANSPORT}
    assert gossip_side == set(demux.GOSSIP_TYPES)


@pytest.mark.parametrize(("label", "value"), [
    ("meshguard holepunch v2\\0", holepunch.SIGN_CONTEXT),
    ("meshguard relay origin v2\\0", relay.E2E_LABEL),
    ("meshguard org-cert-revoke v1\\0", org.REVOKE_CONTEXT),
    ("meshguard org-alias v1\\0", org.ALIAS_CONTEXT),
])
def test_documented_signing_contexts_are_the_codecs(label: str, value: bytes) -> None:
    assert f'"{label}"' in (DOCS / "wire-format.md").read_text(encoding="utf-8")
    assert label.replace("\\0", "\x00").encode() == value
