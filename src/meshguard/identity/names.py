"""Names: node names, trust-file names and mesh DNS names are all DNS labels.

A label is 1-63 characters of ASCII letters, digits and `-`, not starting or ending with `-`
(RFC 1035 section 2.3.1, relaxed by RFC 1123 to allow a leading digit). That rule also makes a
name safe as a file name: no `/`, no `..`, no leading dot, nothing a shell or DNS would mangle.
Certificate names are at most 32 bytes (the NodeCertificate field).
"""

from __future__ import annotations

import re

from meshguard.identity.errors import UnsafeNameError

MAX_LABEL_LEN = 63
CERT_NAME_LEN = 32
MESH_TLD = "mesh"

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def is_dns_label(name: str, max_len: int = MAX_LABEL_LEN) -> bool:
    return len(name) <= max_len and _LABEL.fullmatch(name) is not None


def validate_label(name: str, what: str = "name", max_len: int = MAX_LABEL_LEN) -> str:
    """Return `name` unchanged if it is a DNS label of at most max_len characters."""
    if not is_dns_label(name, max_len):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise UnsafeNameError(
            f"{what} {shown!r} is not a DNS label; use 1-{max_len} letters, digits and "
            "'-' (not first or last), e.g. 'node-1'"
        )
    return name


def node_dns_name(node_name: str, org_domain: str) -> str:
    """`<node_name>.<org hex6>.mesh`, lowercased (DNS is case-insensitive)."""
    return f"{node_name}.{org_domain}.{MESH_TLD}".lower()
