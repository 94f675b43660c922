"""Inputs the fuzzers found that raised something other than the codec's documented error.

Each test feeds the recorded input and checks that only the documented error comes out.
"""

from __future__ import annotations

import json

import pytest

from meshguard.errors import WireFormatError
from meshguard.wire import control


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
