"""Inputs the fuzzers found that raised something other than the codec's documented error.

Each test feeds the recorded input and checks that only the documented error comes out.
"""

from __future__ import annotations

import json

import pytest

from meshguard.errors import WireFormatError
from meshguard.mesh import org_gossip
from meshguard.testing.rng import SeededRng
from meshguard.wire import control, org


def _status(**fields: object) -> dict[str, object]:
    me = control.SelfStatus("n", "aWQ=", "d2c=", "10.99.0.1", "fd99:6d67::1", 51821, 51821)
    doc = control.StatusReport("mg0", "userspace", 1, 1.0, me, (), {"gossip_rx": 1}).to_json()
    doc.update(fields)
    return doc


@pytest.mark.parametrize("line", [
    b"[" * 5000,  # nested deeper than the JSON decoder's recursion limit
    b'{"op":"status","args":' + b'{"a":' * 3000 + b"1" + b"}" * 3001 + b"\n",
])
def test_deeply_nested_control_line_is_a_wire_format_error(line: bytes) -> None:
    with pytest.raises(WireFormatError):
        control.decode_request(line)
    with pytest.raises(WireFormatError):
        control.decode_response(line)


@pytest.mark.parametrize("fields", [
    {"pid": 1e400},  # JSON reads 1e400 as float infinity, which int() refuses
    {"counters": {"gossip_rx": float("inf")}},
])
def test_infinite_number_in_status_document_is_a_wire_format_error(
        fields: dict[str, object]) -> None:
    line = json.dumps({"ok": True, "result": _status(**fields)}).encode() + b"\n"
    resp = control.decode_response(line)
    assert resp.result is not None
    with pytest.raises(WireFormatError):
        control.StatusReport.from_json(resp.result)


# trust_files target (bench/fuzz.py, 1M inputs): an `org/alias` line whose issued_at does not
# fit the signed message's i64 raised struct.error out of alias_valid, so a daemon loading
# that file (start, SIGHUP) died instead of skipping the alias.
ALIAS_LINE = (
    "alias SD8G6iVXq3fNeswwxPdFeIbLrt99dre8jW1yvoN9TWw= coqp 1700000000"
    + "4" * 106 + " /3uyEG2RTfInCkSRbEuas/IpmagLU+uYuWvrJ26N2J0meISr0Ry2neH7IK47Oo/yeTh0jgu6z5O08"
    "/no/UWNDA==\n")


def test_alias_line_with_out_of_range_time_is_refused_not_raised() -> None:
    ann = org_gossip.parse_alias_line(ALIAS_LINE)
    assert ann is not None and ann.issued_at >= 2**63
    assert org_gossip.alias_valid(ann) is False
    core = org_gossip.OrgGossip(SeededRng(1))
    assert core.add_alias(ann, [ann.org_key], 1_700_000_000.0) is False  # as the daemon calls


@pytest.mark.parametrize("t", [2**63, -(2**63) - 1, 10**40])
def test_signed_messages_refuse_times_outside_i64(t: int) -> None:
    with pytest.raises(WireFormatError):
        org.alias_message(b"\x01" * 32, "corp", t)
    with pytest.raises(WireFormatError):
        org.revoke_message(b"\x01" * 32, b"\x02" * 32, t)
