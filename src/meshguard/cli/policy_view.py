"""`meshguard policy [--json]`: what the running daemon enforces (the control socket's `policy`
op, daemon/policy_runner.py): each source (local files; each org policy with its serial and
digest), the rules with a packet counter each, drops and passes by reason, refused policies by
reason, and signed policies being pulled from other members (docs/policy.md)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping

from meshguard.cli.daemon_commands import add_common, run_dir_of

DROPS = ("policy", "unparsed")
PASSES = ("allowed", "reply", "icmp")
# what the policy gossip (mesh/policy_gossip.py) refused before a blob reached the store
GOSSIP_DROPS = frozenset({"policy_digest_mismatch", "policy_malformed",
                          "policy_transfer_timeout", "policy_not_member", "policy_bad_mac",
                          "policy_garbage", "policy_chunk_unexpected",
                          "policy_chunk_wrong_sender"})


def _pairs(counts: Mapping[str, object], names: tuple[str, ...] | None = None) -> str:
    keys = names if names is not None else tuple(sorted(counts))
    return ", ".join(f"{k} {counts.get(k, 0)}" for k in keys) or "none"


def _source_line(s: Mapping[str, object]) -> str:
    if s.get("kind") == "org":
        digest = str(s.get("digest", ""))
        return (f"  {s.get('source')}  digest {digest[:16]}  issued {s.get('issued_at')}"
                f"  {s.get('routes', 0)} route lines")
    if "default" in s:
        return f"  {s.get('source')}  {s.get('default') or '(none: allow)'}"
    note = "" if s.get("resolved", True) else "  (name not trusted: no effect)"
    return f"  {s.get('source')}  {s.get('rules', 0)} rules{note}"


def format_policy(rep: Mapping[str, object]) -> str:
    kernel = rep.get("mode") == "kernel"
    if not rep.get("active"):
        state = "no policy in force: everything passes"
    elif rep.get("enforced", True):
        state = "enforced by nftables (kernel mode)" if kernel else "enforced"
    else:
        state = "not enforced: nft refused the rules (see the daemon's log)" if kernel \
            else "not enforced"
    lines = [f"policy: {state}"]
    sources = rep.get("sources")
    lines.append("sources:")
    if isinstance(sources, list) and sources:
        lines += [_source_line(s) for s in sources if isinstance(s, dict)]
    else:
        lines.append("  none")
    rules = rep.get("rules")
    if isinstance(rules, list) and rules:
        lines.append("rules:")
        lines.append(f"  {'PACKETS':>9}  SOURCE:LINE  RULE")
        for r in rules:
            if isinstance(r, dict):
                lines.append(f"  {r.get('packets', 0):>9}  {r.get('source')}:{r.get('line')}"
                             f"  {r.get('text')}")
    reasons = rep.get("reasons")
    if isinstance(reasons, dict) and reasons:
        lines.append(f"dropped: {_pairs(reasons, DROPS)}")
        lines.append(f"passed: {_pairs(reasons, PASSES)}")
    refused = rep.get("refused")
    lines.append("refused policies: " + (_pairs(refused) if isinstance(refused, dict)
                                         and refused else "none"))
    gossip = rep.get("gossip")
    if isinstance(gossip, dict):
        bad = {k.removeprefix("policy_"): v for k, v in gossip.items() if k in GOSSIP_DROPS}
        if bad:
            lines.append(f"gossip dropped: {_pairs(bad)}")
    transfers = rep.get("transfers")
    if isinstance(transfers, list):
        for t in transfers:
            if isinstance(t, dict):
                lines.append(f"pulling {t.get('org_key')} serial {t.get('serial')}: "
                             f"{t.get('received')}/{t.get('size')} bytes")
    grants = rep.get("grants")
    if isinstance(grants, list) and grants:
        lines.append("route grants:")
        lines += [f"  {g.get('prefix')} via {g.get('member')}  ({g.get('source')})"
                  for g in grants if isinstance(g, dict)]
    if rep.get("last_error"):
        lines.append(f"last reload failed (the last good policies stay): {rep['last_error']}")
    return "\n".join(lines)


def cmd_policy(args: argparse.Namespace) -> int:
    from meshguard.daemon.control_client import select_daemon

    rep = select_daemon(run_dir_of(args), args.interface).request("policy")
    if args.json:
        print(json.dumps(rep, indent=2, sort_keys=True))
    else:
        print(format_policy(rep))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("policy", help="show the policies in force, per-rule packet counters "
                                      "and drops")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_common(p, None)
    p.set_defaults(func=cmd_policy)


__all__ = ["cmd_policy", "format_policy", "register"]
