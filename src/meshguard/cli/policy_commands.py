"""`meshguard service` (the original's local service policies) and `meshguard org-policy`.

    service allow|deny [--peer NAME | --org NAME] PROTO [PORT]   add a rule (PORT may be
                                    left out only in `allow|deny all`)
    service default allow|deny      services/default
    service list                    every file's rules
    service show [PEER]             a summary, or the chain one peer is judged by
    service reset                   remove services/ (allow everything again)
    org-policy sign FILE [--serial N] [--out PATH]   check, sign, store in policies/
    org-policy check FILE           check only
    org-policy show SIGNED          verify a signed policy and print it

Every write is atomic (identity/store.py); a malformed rule or file is one error line with
the file and line, and nothing is written (docs/policy.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshguard.identity.trust import TrustStore
    from meshguard.policy.org_policy import OrgPolicy
    from meshguard.policy.service_files import LocalPolicies
    from meshguard.policy.table import MemberInfo

# Handlers import the policy code when they run (cli/main.py: a command loads only its own).

COMMON_PORTS = (
    (22, "SSH"), (53, "DNS"), (80, "HTTP"), (443, "HTTPS"), (3306, "MySQL"),
    (5432, "PostgreSQL"), (6379, "Redis"), (8080, "alt HTTP"), (9100, "node exporter"),
)


def _config_dir() -> Path:
    from meshguard.config import resolve_config_dir

    return resolve_config_dir()


def _wall() -> float:
    from meshguard.clock import SystemClock

    return SystemClock().wall()


# --- service ---


def _target_path(cfg: Path, peer: str | None, org: str | None) -> tuple[Path, str]:
    from meshguard.errors import ConfigError
    from meshguard.identity.names import is_dns_label
    from meshguard.policy import service_files as sf

    base = cfg / sf.SERVICES
    if peer is None and org is None:
        return base / sf.GLOBAL, "global"
    name = peer if peer is not None else org
    assert name is not None
    key_ok = sf.key_from_name(name) is not None and "/" not in name
    label, dot, domain = name.partition(".") if peer is not None else (name, "", "")
    if not (key_ok or (is_dns_label(label) and (not dot or is_dns_label(domain)))):
        what = "--peer" if peer is not None else "--org"
        raise ConfigError(
            f"{what} {name!r} is neither a name nor a base64 key usable as a file name; "
            "name the key with `meshguard trust KEY --name NAME` and use the name"
        )
    sub, scope = (sf.PEER_DIR, "peer") if peer is not None else (sf.ORG_DIR, "org")
    return base / sub / f"{name}{sf.SUFFIX}", f"{scope} {name}"


def _ensure_services(cfg: Path) -> None:
    from meshguard.identity import store
    from meshguard.policy import service_files as sf

    store.ensure_dir(cfg)
    for sub in ("", sf.PEER_DIR, sf.ORG_DIR):
        store.ensure_dir(cfg / sf.SERVICES / sub, 0o755)


def _read_rule_file(path: Path, source: str) -> tuple[str, int]:
    """The file's text ("" if absent) and how many rules it holds; PolicyError if bad."""
    from meshguard.policy.rules import decode_text, parse_rules

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "", 0
    except OSError as exc:
        from meshguard.errors import ConfigError

        raise ConfigError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
    text = decode_text(data, source)
    return text, len(parse_rules(text, source))


def _service_rule(args: argparse.Namespace) -> int:
    from meshguard.errors import ConfigError
    from meshguard.identity import store
    from meshguard.policy.rules import MAX_RULES, PolicyError, rule_from_tokens

    toks = [args.action, args.proto, *([args.port] if args.port is not None else [])]
    try:
        rule = rule_from_tokens(toks, "rule", 1)
    except PolicyError as exc:
        raise ConfigError(f"bad rule {' '.join(toks)!r}: {exc.detail}") from None
    cfg = _config_dir()
    path, scope = _target_path(cfg, args.peer, args.org)
    source = str(path.relative_to(cfg))
    text, count = _read_rule_file(path, source)
    if count >= MAX_RULES:
        raise ConfigError(f"{source} holds {MAX_RULES} rules already; remove some first")
    if text and not text.endswith("\n"):
        text += "\n"
    _ensure_services(cfg)
    store.write_file(path, f"{text}{rule.text}\n".encode())
    print(f"rule added ({scope}): {rule.text}")
    return 0


def _service_default(args: argparse.Namespace) -> int:
    from meshguard.identity import store
    from meshguard.policy import service_files as sf

    cfg = _config_dir()
    _ensure_services(cfg)
    store.write_file(cfg / sf.SERVICES / sf.DEFAULT, f"{args.action}\n".encode())
    print(f"default policy set to: {args.action}")
    return 0


def _load(cfg: Path) -> tuple[TrustStore, LocalPolicies]:
    from meshguard.identity.trust import TrustStore
    from meshguard.policy.service_files import load_services

    trust = TrustStore.load(cfg)
    local = load_services(cfg, trust)
    for problem in local.problems:
        print(f"meshguard: warning: {problem}", file=sys.stderr)
    return trust, local


def _service_list(args: argparse.Namespace) -> int:
    from meshguard.crypto.keys import b64encode

    _, local = _load(_config_dir())
    if not local.configured:
        print("no service policies configured (default: allow all)")
        return 0
    default = {None: "allow (no services/default)", True: "allow", False: "deny"}
    print(f"default: {default[local.default_allow]}")
    blocks = [("global", local.global_rules, "services/global.policy")]
    if not local.global_rules:
        blocks.clear()
    for kind, scoped_list in (("peer", local.peers), ("org", local.orgs)):
        for s in scoped_list:
            key = f", key {b64encode(s.key)}" if s.key is not None else " (by certificate name)"
            blocks.append((f"{kind} {s.name}{key}", s.rules, s.source))
    for title, rules, source in blocks:
        print(f"\n[{title}] {source}")
        for r in rules:
            print(f"  {r.line:>4}  {r.text}")
    return 0


def _service_show(args: argparse.Namespace) -> int:
    cfg = _config_dir()
    trust, local = _load(cfg)
    if args.peer is None:
        default = "deny" if local.default_allow is False else "allow"
        print(f"default: {default}")
        print(f"global policy: {'yes' if local.global_rules else 'no'}")
        print(f"peer policies: {len(local.peers)}")
        print(f"org policies: {len(local.orgs)}")
        return 0
    _show_peer(cfg, trust, local, args.peer)
    return 0


def _me(cfg: Path) -> MemberInfo:
    """This node as the compiler sees it (sections `to GROUP` depend on it)."""
    from meshguard.errors import MeshguardError
    from meshguard.identity import store
    from meshguard.policy.table import MemberInfo

    try:
        identity = store.load_identity(cfg).public_key.raw
        cert = store.load_node_certificate(cfg)
    except MeshguardError:
        return MemberInfo(b"me", b"me")
    if cert is None or cert.problem(_wall(), identity) is not None:
        return MemberInfo(identity, b"me")
    return MemberInfo(identity, b"me", cert.name, (cert.org_key,))


def _show_peer(cfg: Path, trust: TrustStore, local: LocalPolicies, peer: str) -> None:
    from meshguard.crypto.keys import b64encode
    from meshguard.policy.compiler import compile_table
    from meshguard.policy.service_files import key_from_name
    from meshguard.policy.store import PolicyStore
    from meshguard.policy.table import PROTO_TCP, PROTO_UDP, MemberInfo
    from meshguard.policy.verdict import chain_of, decide

    me = _me(cfg)
    key = trust.peers.get(peer) or key_from_name(peer) or b"?" + peer.encode()
    names = trust.peer_names(key)
    member = MemberInfo(key, b"peer", names[0] if names else peer)
    orgs = set(trust.orgs.values())
    in_force = PolicyStore.load(cfg).in_force(orgs)
    org_names = {k: n for n, k in sorted(trust.orgs.items(), reverse=True)}
    table = compile_table(local, in_force, me, [member], org_names)
    chain = chain_of(table, b"peer")
    shown = b64encode(key) if len(key) == 32 else "not a trusted key; by certificate name"
    print(f"effective policy for {peer!r} ({shown}):")
    for n, rule in enumerate(chain.rules, 1):
        info = table.rules[rule.counter]
        print(f"  {n:>3}. {info.text:<40} {info.source}:{info.line}")
    dinfo = table.rules[chain.default_counter]
    print(f"       default {'allow' if chain.default_allow else 'deny':<32} {dinfo.source}")
    print(f"\n  {'PORT':<6} {'SERVICE':<14} {'TCP':<6} UDP")
    for port, service in COMMON_PORTS:
        tcp = decide(chain, PROTO_TCP, port)[0] if table.active else True
        udp = decide(chain, PROTO_UDP, port)[0] if table.active else True
        print(f"  {port:<6} {service:<14} {'allow' if tcp else 'deny':<6} "
              f"{'allow' if udp else 'deny'}")


def _service_reset(args: argparse.Namespace) -> int:
    import os
    import shutil

    from meshguard.errors import ConfigError
    from meshguard.policy.service_files import SERVICES

    cfg = _config_dir()
    base = cfg / SERVICES
    if not base.exists():
        print("no service policies to reset")
        return 0
    for stale in cfg.glob(f".{SERVICES}.reset*"):  # left by a reset that was killed
        shutil.rmtree(stale, ignore_errors=True)
    doomed = cfg / f".{SERVICES}.reset{os.getpid()}"
    try:
        os.replace(base, doomed)  # one rename: a reader sees all of services/ or none
    except OSError as exc:
        raise ConfigError(f"cannot remove {base} ({exc.strerror}); check its permissions") from None
    shutil.rmtree(doomed, ignore_errors=True)
    print("service policies reset (default: allow all)")
    return 0


# --- org-policy ---


def _read_policy_file(path_arg: str) -> tuple[str, OrgPolicy]:
    from meshguard.errors import ConfigError
    from meshguard.policy.org_policy import parse_org_policy_file
    from meshguard.policy.rules import error
    from meshguard.policy.signed import MAX_TEXT

    try:
        with open(path_arg, "rb") as f:
            data = f.read(MAX_TEXT + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path_arg} ({exc.strerror}); pass a policy file") from None
    if len(data) > MAX_TEXT:
        raise error(path_arg, 1, f"larger than {MAX_TEXT} bytes", "shorten the policy")
    policy = parse_org_policy_file(data, path_arg)
    return data.decode("utf-8"), policy


def _counts(policy: OrgPolicy) -> str:
    return (f"{len(policy.groups)} groups, {len(policy.rules)} rules, "
            f"{len(policy.routes)} routes")


def _org_policy_check(args: argparse.Namespace) -> int:
    _, policy = _read_policy_file(args.file)
    print(f"{args.file}: ok ({_counts(policy)})")
    return 0


def _org_name(cfg: Path, org_key: bytes) -> str:
    from meshguard.identity.addressing import org_domain
    from meshguard.identity.trust import TrustStore

    names = TrustStore.load(cfg).org_names(org_key)
    domain = org_domain(org_key)
    return f"{names[0]} (domain {domain})" if names else f"domain {domain}"


def _org_policy_sign(args: argparse.Namespace) -> int:
    from meshguard.errors import ConfigError
    from meshguard.identity import store
    from meshguard.policy.signed import sign_policy
    from meshguard.policy.store import POLICIES, PolicyStore, policy_file_name

    cfg = _config_dir()
    org = store.load_org_key(cfg)
    org_key = org.public_key.raw
    text, policy = _read_policy_file(args.file)
    policies = PolicyStore.load(cfg)
    newest = policies.newest(org_key)
    last = newest.serial if newest is not None else -1
    now = int(_wall())
    if args.serial is not None:
        if not 0 <= args.serial < 2**64:
            raise ConfigError(f"--serial {args.serial} is out of range; use 0 to 2^64-1")
        if args.serial <= last:
            raise ConfigError(
                f"--serial {args.serial} is not above {last}, the newest policy of this org "
                "here; nodes would refuse it, so pass a larger --serial or leave it out"
            )
        serial = args.serial
    else:
        serial = max(last + 1, now)
    signed = sign_policy(org, text, serial, now)
    if args.out is not None:
        store.write_file(Path(args.out), signed.raw)
    outcome = policies.offer(signed, {org_key})
    if outcome != "accepted" or policies.counts["unsaved"]:
        problem = policies.problems[-1] if policies.problems else outcome
        raise ConfigError(f"the signed policy was not stored ({problem}); fix and sign again")
    print(f"signed the policy of org {_org_name(cfg, org_key)}, serial {serial}: "
          f"{_counts(policy)}")
    print(f"stored in {cfg / POLICIES / policy_file_name(org_key)}"
          + (f" and {args.out}" if args.out is not None else ""))
    return 0


def _org_policy_show(args: argparse.Namespace) -> int:
    import datetime

    from meshguard.crypto.keys import b64encode
    from meshguard.errors import ConfigError, WireFormatError
    from meshguard.policy.signed import MAX_BLOB, decode_policy, signature_valid
    from meshguard.policy.store import check_policy

    fix = "pass a .mgpolicy file written by `meshguard org-policy sign`"
    try:
        with open(args.signed, "rb") as f:
            raw = f.read(MAX_BLOB + 1)
        sp = decode_policy(raw)
    except OSError as exc:
        raise ConfigError(f"cannot read {args.signed} ({exc.strerror}); {fix}") from None
    except WireFormatError as exc:
        raise ConfigError(f"{args.signed} is not a signed policy ({exc}); {fix}") from None
    if not signature_valid(sp):
        raise ConfigError(f"{args.signed}: the signature does not verify; {fix}")
    try:
        issued = datetime.datetime.fromtimestamp(sp.issued_at, datetime.UTC).isoformat()
    except (OverflowError, OSError, ValueError):  # any i64 verifies; informational only
        issued = f"{sp.issued_at} (unix seconds, not a date)"
    print(f"org:     {b64encode(sp.org_key)} {_org_name(_config_dir(), sp.org_key)}")
    print(f"serial:  {sp.serial}")
    print(f"issued:  {issued}")
    print(f"digest:  {sp.digest.hex()}")
    if check_policy(sp) is None:
        print("meshguard: warning: its text does not parse here; nodes refuse it",
              file=sys.stderr)
    print()
    sys.stdout.write(sp.text if sp.text.endswith("\n") or not sp.text else sp.text + "\n")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("service", help="local service access policies (services/)")
    ssub = p.add_subparsers(dest="service_command", metavar="COMMAND", required=True)
    for action in ("allow", "deny"):
        q = ssub.add_parser(action, help=f"add a {action} rule: {action} PROTO PORT")
        target = q.add_mutually_exclusive_group()
        target.add_argument("--peer", help="a peer's name or base64 key (default: global)")
        target.add_argument("--org", help="a trusted org's name or base64 key")
        q.add_argument("proto", help="tcp, udp or all")
        q.add_argument("port", nargs="?", help="PORT, LOW-HIGH or all (optional after all)")
        q.set_defaults(func=_service_rule, action=action)
    q = ssub.add_parser("default", help="what no rule matches gets")
    q.add_argument("action", choices=("allow", "deny"))
    q.set_defaults(func=_service_default)
    q = ssub.add_parser("list", help="list every service policy")
    q.set_defaults(func=_service_list)
    q = ssub.add_parser("show", help="a summary, or the effective policy for one peer")
    q.add_argument("peer", nargs="?", help="peer name, certificate name or base64 key")
    q.set_defaults(func=_service_show)
    q = ssub.add_parser("reset", help="remove every service policy")
    q.set_defaults(func=_service_reset)

    p = sub.add_parser("org-policy", help="org-signed policies (org admin)")
    osub = p.add_subparsers(dest="org_policy_command", metavar="COMMAND", required=True)
    q = osub.add_parser("sign", help="check, sign and store a policy (needs org.key)")
    q.add_argument("file", help="the policy text (docs/policy.md)")
    q.add_argument("--serial", type=int, help="default: max(last signed + 1, unix time)")
    q.add_argument("--out", help="also write the signed policy here")
    q.set_defaults(func=_org_policy_sign)
    q = osub.add_parser("check", help="check a policy file, sign nothing")
    q.add_argument("file")
    q.set_defaults(func=_org_policy_check)
    q = osub.add_parser("show", help="verify a signed policy and print it")
    q.add_argument("signed", help="a .mgpolicy file")
    q.set_defaults(func=_org_policy_show)
