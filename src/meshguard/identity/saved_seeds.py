"""The `seeds` file: members to join through that `meshguard connect` saved for later `up` runs.

One `HOST:PORT` (or `[IPv6]:PORT`) per line, the original Zig meshguard's format and file name,
so either reads the other's. meshguard writes a comment line before each entry naming the peer
it was paired with (`# <name> <base64 identity key>`), which the original skips like any line
it cannot parse; pairing the same peer again replaces its entry. Blank lines and other comment
lines are kept as they are. The file is replaced atomically (identity/store.py).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from meshguard.crypto.keys import b64encode
from meshguard.errors import ConfigError
from meshguard.identity import store
from meshguard.sansio import Endpoint

SEEDS = "seeds"
MAX_FILE = 64 * 1024


def format_endpoint(ep: Endpoint) -> str:
    host, port = ep
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_endpoint(text: str) -> Endpoint | None:
    """`HOST:PORT` or `[IPv6]:PORT` (a host name is allowed); None if it is neither."""
    t = text.strip()
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep or not rest.startswith(":"):
            return None
        port_s = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    else:
        host, sep, port_s = t.rpartition(":")
        if not sep or not host or ":" in host or any(c.isspace() for c in host):
            return None
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        return None
    return host, int(port_s)


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()[:MAX_FILE + 1]
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror}); fix its permissions") from None
    return decode_file(data, path)


def decode_file(data: bytes, path: Path) -> str:
    if len(data) > MAX_FILE:
        raise ConfigError(f"{path} is larger than {MAX_FILE} bytes; it is not a seeds file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; remove it or fix it") from None


def parse(text: str, path: Path) -> list[Endpoint]:
    """The seeds in a file's text, in file order; a line that is neither a comment nor an
    endpoint is an error naming the line."""
    out: list[Endpoint] = []
    for n, line in enumerate(text.splitlines(), 1):
        t = line.strip()
        if not t or t.startswith("#"):
            continue
        ep = parse_endpoint(t)
        if ep is None:
            raise ConfigError(f"{path} line {n}: {t[:60]!r} is not HOST:PORT; fix or remove "
                              "the line")
        if ep not in out:
            out.append(ep)
    return out


def load(config_dir: Path) -> list[Endpoint]:
    """The saved seeds of a config dir (none without a `seeds` file)."""
    path = config_dir / SEEDS
    return parse(_read(path), path)


def with_entry(text: str, name: str, identity_key: bytes, ep: Endpoint) -> str:
    """The file's text with `ep` as the seed of the peer `identity_key`, replacing that peer's
    earlier entry (its comment line and the endpoint after it)."""
    key = b64encode(identity_key)
    kept: list[str] = []
    skip_next = False
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "#" and words[2] == key:
            skip_next = True
            continue
        if skip_next and parse_endpoint(line) is not None:
            skip_next = False
            continue
        skip_next = False
        kept.append(line)
    kept += [f"# {name} {key}", format_endpoint(ep)]
    return "\n".join(kept) + "\n"


def save(config_dir: Path, name: str, identity_key: bytes, ep: Endpoint) -> Path:
    """Record `ep` as the seed of the peer `identity_key`, atomically."""
    path = config_dir / SEEDS
    text = with_entry(_read(path), name, identity_key, ep)
    store.ensure_dir(config_dir)
    store.write_file(path, text.encode("utf-8"))
    return path
