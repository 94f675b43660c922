"""The org-signed policies a node holds: the newest of each org, on disk in `policies/`.

    policies/<64 hex digits of the org key>.mgpolicy    the signed blob (policy/signed.py)

`offer` takes a policy from anywhere (gossip, `meshguard org-policy sign`, a file) and says
what became of it: "accepted" (the newest of its org now, written atomically), "held" (the
very policy in force, offered again: not a refusal), "older" (its serial is not above the one
held), "untrusted" (its org is not among `trusted_orgs`) or
"invalid" (a bad signature, or text that does not parse). Only "accepted" changes anything;
the checks run cheapest first (trust, serial, then the signature, then the parse), and every
outcome is counted. `load` reads what is on disk at start; a file that is not a well-named,
validly signed, parseable policy is ignored and counted ("bad_file"), so a corrupt file never
stops a node, and the last good policy of an org stays in force until a newer good one comes.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from meshguard.errors import ConfigError, WireFormatError
from meshguard.identity import store as files
from meshguard.policy.org_policy import OrgPolicy, parse_org_policy
from meshguard.policy.rules import PolicyError
from meshguard.policy.signed import MAX_BLOB, SignedPolicy, decode_policy, signature_valid

POLICIES = "policies"
SUFFIX = ".mgpolicy"
MAX_FILES = 4096  # files read from policies/ at start
OUTCOMES = ("accepted", "held", "older", "untrusted", "invalid")


def policy_file_name(org_key: bytes) -> str:
    return f"{bytes(org_key).hex()}{SUFFIX}"


def policy_source(sp: SignedPolicy) -> str:
    """The name errors in a signed policy's text are reported under."""
    return f"{POLICIES}/{policy_file_name(sp.org_key)}"


def check_policy(sp: SignedPolicy) -> OrgPolicy | None:
    """The parsed policy if the signature holds and the text parses, else None."""
    if not signature_valid(sp):
        return None
    try:
        return parse_org_policy(sp.text, policy_source(sp))
    except (PolicyError, ValueError):  # ValueError: never, but a text from the network
        return None                    # must not end the daemon if a parser slips


@dataclass
class PolicyStore:
    directory: Path | None  # None: keep in memory only
    held: dict[bytes, tuple[SignedPolicy, OrgPolicy]] = field(default_factory=dict)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys((*OUTCOMES, "bad_file", "unsaved"), 0)
    )
    problems: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, config_dir: Path) -> PolicyStore:
        st = cls(config_dir / POLICIES)
        assert st.directory is not None
        try:
            entries = sorted(st.directory.iterdir())[:MAX_FILES]
        except FileNotFoundError:
            return st
        except OSError as exc:
            st.problems.append(f"cannot list {st.directory}: {exc.strerror}")
            return st
        for path in entries:
            if path.name.startswith(".") or not path.name.endswith(SUFFIX):
                continue
            problem = st._load_file(path)
            if problem is not None:
                st.counts["bad_file"] += 1
                st.problems.append(f"{path}: ignored ({problem})")
        return st

    def _load_file(self, path: Path) -> str | None:
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_BLOB + 1)
            sp = decode_policy(raw)
        except (OSError, WireFormatError) as exc:
            return str(exc)
        if path.name != policy_file_name(sp.org_key):
            return "its name is not its org key"
        policy = check_policy(sp)
        if policy is None:
            return "bad signature or policy text"
        held = self.held.get(sp.org_key)
        if held is None or sp.serial > held[0].serial:
            self.held[sp.org_key] = (sp, policy)
        return None

    def newest(self, org_key: bytes) -> SignedPolicy | None:
        held = self.held.get(bytes(org_key))
        return held[0] if held is not None else None

    def judge(self, sp: SignedPolicy, trusted_orgs: Collection[bytes]) -> str:
        """What `offer` would answer, changing nothing and counting nothing."""
        return self._judge(sp, trusted_orgs)[0]

    def _judge(
        self, sp: SignedPolicy, trusted_orgs: Collection[bytes]
    ) -> tuple[str, OrgPolicy | None]:
        if sp.org_key not in trusted_orgs:
            return "untrusted", None
        held = self.held.get(sp.org_key)
        if held is not None and sp.raw == held[0].raw:
            return "held", None  # the policy in force, offered again: nothing to refuse
        if held is not None and sp.serial <= held[0].serial:
            return "older", None
        policy = check_policy(sp)
        return ("accepted", policy) if policy is not None else ("invalid", None)

    def offer(self, sp: SignedPolicy, trusted_orgs: Collection[bytes]) -> str:
        """Take `sp` if it is the newest validly signed policy of an org in `trusted_orgs`."""
        outcome, policy = self._judge(sp, trusted_orgs)
        self.counts[outcome] += 1
        if policy is None:
            return outcome
        self.held[sp.org_key] = (sp, policy)
        if self.directory is not None:
            try:
                files.ensure_dir(self.directory, 0o755)
                files.write_file(self.directory / policy_file_name(sp.org_key), sp.raw)
            except ConfigError as exc:  # in force now; lost at a restart
                self.counts["unsaved"] += 1
                self.problems.append(str(exc))
        return outcome

    def in_force(self, trusted_orgs: Collection[bytes]) -> list[tuple[SignedPolicy, OrgPolicy]]:
        """The held policies of the orgs in `trusted_orgs`, by org key."""
        return [self.held[k] for k in sorted(self.held) if k in trusted_orgs]
