"""Fuzz targets for every codec and for the composed node's receive path, and a mutation engine.

A `Target` is a function of one byte string plus the exception types it may raise (the
documented error of its codec: `WireFormatError` for wire/, `CertificateError` for
certificates, `KeyFileError` / `ConfigError` for files; nothing at all for the demultiplexer,
the DNS resolver, the STUN client, the gossip.state reader, the UAPI request parser and
`MeshNode.receive`).
Anything else it raises is a failure, as is a decoded message that does not encode back to the
same bytes where the codec is canonical, and, for the C fast path (coalesce, open_batch, the
handshake guard), any difference from its pure Python twin.

Seeds are real encodings: `MeshFixture` runs a small mesh in virtual time (real SWIM cores,
WireGuard devices, org gossip, relay and hole-punch cores, a trust store with an org and an
authorized key) and records every datagram; the other codecs' seeds come from their encoders.
`Mutator` derives inputs from the seeds (bit flips, interesting integers, truncation,
extension, insertion, deletion, splicing of two seeds), deterministically from one seed.

For the node there are two targets. `node` feeds mutated datagrams as they are, so almost all
of them die at the first MAC or signature check. `node_auth` re-authenticates each mutated
datagram as the member it claims to come from would (gossip MAC, re-signed records and
accusations, relay hop MAC, hole-punch and org signatures, WireGuard mac1), so the code behind
those checks sees malformed-but-authentic input too (what a rogue member can send).

bench/fuzz.py runs these targets for a million inputs each (coverage-guided with atheris when
it is installed); tests/fuzz/ runs a few thousand per target.
"""

from __future__ import annotations

from meshguard.testing.fuzz_codecs import codec_targets, stun_seeds
from meshguard.testing.fuzz_engine import (
    Failure,
    FuzzStats,
    Mutator,
    RoundTripError,
    Target,
    check_one,
    counted_logs,
    dedupe,
    fuzz,
    prepare,
)
from meshguard.testing.fuzz_mesh import MeshCapture, NodeHarness, build_mesh, mesh_capture


def node_targets(seed: int = 1, reset_every: int = 50_000) -> dict[str, Target]:
    """`node` (mutated datagrams as they are) and `node_auth` (re-authenticated)."""
    out: dict[str, Target] = {}
    for name, auth in (("node", False), ("node_auth", True)):
        # re-authenticated handshakes should reach the Noise code, not only the cookie check
        h = NodeHarness(seed, under_load=10**9 if auth else None)
        seeds = dedupe(h.mesh.to_victim + h.mesh.relay_seeds + h.mesh.punch_seeds
                       + stun_seeds()[1:3])
        out[name] = Target(name, seeds, h.receive, (), fixup=h.reauth if auth else None,
                           reset=h.reset, reset_every=reset_every)
    return out


def all_targets() -> dict[str, Target]:
    return {**codec_targets(), **node_targets()}


__all__ = [
    "Failure",
    "FuzzStats",
    "MeshCapture",
    "Mutator",
    "NodeHarness",
    "RoundTripError",
    "Target",
    "all_targets",
    "build_mesh",
    "check_one",
    "codec_targets",
    "counted_logs",
    "fuzz",
    "mesh_capture",
    "node_targets",
    "prepare",
]
