"""The daemon's log lines: text or JSON, and a filter that keeps its secret keys out of them.

`setup_logging(level, fmt)` puts one handler on stderr (`meshguard up --log-format text|json`);
`set_level(level)` changes the level of a running daemon (a reload's `log_level`).

- text: `2026-01-31 12:00:00,123 INFO meshguard.daemon: message`, as before.
- json: one object per line, for log shippers: `ts` (RFC 3339, UTC, milliseconds), `level`
  (`debug`, `info`, `warning`, `error`, `critical`), `logger`, `msg`, then `exc` (the
  traceback) and `stack` when the call had them, and every `extra=` field of the call (a
  field named like one of ours gets an `extra_` prefix). Values that JSON cannot carry are
  written as their `str()`. A call whose arguments do not fit its format string still gives
  one line (its format string and arguments), never an exception.

Both formats pass every record through `SecretFilter` first: the daemon registers the private
keys it holds at start-up (`register_secret`: its identity seed, its WireGuard private key,
the preshared keys of its plain WireGuard devices), and any of them found in a message, a
traceback or an `extra=` field, in any encoding (base64 or base64url at any byte alignment,
hex, a bytes repr), is replaced by `<redacted>`. The daemon never logs a secret on purpose;
the filter is the second line (docs/security.md#a-local-user names the tests of both).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from meshguard.errors import MeshguardError

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "<redacted>"
MAX_DEPTH = 4  # nesting of extra= values written as JSON; deeper is written as str()

# what every LogRecord has; anything else on a record came from `extra=`
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime",
                                                               "taskName"}


class LogSetupError(MeshguardError):
    """An unknown log level or format."""


def parse_level(level: str) -> int:
    value = LEVELS.get(level.lower()) if isinstance(level, str) else None
    if value is None:
        raise LogSetupError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}")
    return value


def set_level(level: str) -> None:
    """Change the level of every meshguard log line from now on (raises LogSetupError)."""
    logging.getLogger().setLevel(parse_level(level))


def quiet_libraries(record: logging.LogRecord) -> bool:
    """pyroute2 and asyncio debug chatter drowns our own debug output: keep their warnings."""
    noisy = record.name.startswith(("pyroute2", "asyncio"))
    return record.levelno >= logging.WARNING or not noisy


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:  # a broken __str__ must not lose the line
        return f"<unprintable {type(value).__name__}>"


def safe_message(record: logging.LogRecord) -> str:
    """The record's message; its format string and arguments when they do not fit."""
    try:
        return record.getMessage()
    except Exception:
        if not record.args:
            return _safe_str(record.msg)
        try:
            args = repr(record.args)
        except Exception:
            args = "<unprintable arguments>"
        return f"{_safe_str(record.msg)} (log arguments that do not fit: {args})"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_FIELDS}


# ---- redaction ---------------------------------------------------------------------------


def _b64_cores(secret: bytes) -> list[str]:
    """The base64 and base64url characters that depend on `secret` alone, for each of the
    three alignments it can have inside a longer encoded blob (an identity.key holds the
    seed at offset 0 of 64 bytes, a dump could hold a key anywhere)."""
    out = []
    n = len(secret)
    for j in range(3):
        start = -(-8 * j // 6)  # the first 6-bit group that begins inside the secret
        end = (8 * j + 8 * n) // 6  # one past the last group that ends inside it
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            out.append(enc(b"\0" * j + secret).decode()[start:end])
    return out


def _repr_bodies(secret: bytes) -> set[str]:
    """How the secret's bytes read inside a bytes repr (either quote style)."""
    bodies = set()
    for quote in ("'", '"'):
        parts = []
        for b in secret:
            c = chr(b)
            if c == "\\" or c == quote:
                parts.append("\\" + c)
            elif c in "\t\n\r":
                parts.append({"\t": "\\t", "\n": "\\n", "\r": "\\r"}[c])
            elif 32 <= b < 127:
                parts.append(c)
            else:
                parts.append(f"\\x{b:02x}")
        bodies.add("".join(parts))
    return bodies


def secret_encodings(secret: bytes) -> set[str]:
    """How `secret` can read inside a log line: base64 and base64url cores at each alignment,
    hex (matched in either case), the body of a bytes repr."""
    whole = {e.decode() for e in (base64.b64encode(secret), base64.urlsafe_b64encode(secret))}
    return {*whole, *(e.rstrip("=") for e in whole), *_b64_cores(secret), secret.hex(),
            *_repr_bodies(secret)}


def secret_patterns(secret: bytes) -> list[str]:
    """Regular expressions for every encoding of `secret` (secret_encodings)."""
    hexed = secret.hex()
    return [f"(?i:{e})" if e == hexed else re.escape(e) for e in secret_encodings(secret)]


# The gate in front of the secrets' regex (whose cost grows with every secret registered):
# every base64 or hex encoding of a secret of MIN_LEN (16) bytes or more is at least 20
# characters long (a base64 core at one byte's alignment), so one of the windows of _WINDOW
# characters at its first 20 - _WINDOW + 1 = _STRIDE offsets starts at a multiple of _STRIDE
# in the line. A line none of whose windows there is one of those (in lowercase, for hex)
# holds no such encoding; the regex only reads the lines that may.
_WINDOW, _STRIDE = 16, 5


def _windows(secret: bytes) -> set[str]:
    """The gate's windows of every encoding of `secret` but its bytes repr."""
    return {e.lower()[i:i + _WINDOW] for e in secret_encodings(secret) - _repr_bodies(secret)
            for i in range(_STRIDE)}


class SecretFilter(logging.Filter):
    """Replaces every registered secret in a record by `<redacted>`; keeps every record.

    It also fixes the record's message (arguments applied, or the safe fallback of
    `safe_message`), so that no formatter after it can fail on the arguments. Thread-safe (the
    data path's threads log too); a line that holds no window of a secret's base64 or hex
    (and no backslash, which a bytes repr would have) costs the same however many secrets
    there are, and `searched` counts the lines the full search read.
    """

    MIN_LEN = 16  # shorter "secrets" would redact ordinary text

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: set[bytes] = set()
        # (the secrets, the gate's windows, a repr without a backslash: no gate) - one
        # tuple, replaced whole, so a log call on another thread sees the old or the new one
        self._state: tuple[frozenset[bytes], frozenset[str], bool] | None = None
        # the search for one set of secrets, built when a line first passes the gate (so
        # registering many secrets one by one compiles it once, not once each)
        self._regex: tuple[frozenset[bytes], re.Pattern[str]] | None = None
        self.searched = 0

    def register(self, secret: bytes) -> None:
        if len(secret) < self.MIN_LEN:
            raise ValueError(f"a secret of {len(secret)} bytes is too short to redact")
        with self._lock:
            secret = bytes(secret)
            if secret in self._secrets:
                return
            self._secrets.add(secret)
            _, windows, ungated = self._state or (None, frozenset(), False)
            self._state = (frozenset(self._secrets), windows | _windows(secret),
                           ungated or any("\\" not in b for b in _repr_bodies(secret)))

    def register_all(self, secrets: Iterable[bytes]) -> None:
        for s in secrets:
            self.register(s)

    def _search(self, secrets: frozenset[bytes]) -> re.Pattern[str]:
        with self._lock:
            if self._regex is None or self._regex[0] is not secrets:
                pats = sorted({p for s in secrets for p in secret_patterns(s)}, key=len,
                              reverse=True)
                self._regex = (secrets, re.compile("|".join(pats)))
            return self._regex[1]

    def clear(self) -> None:
        with self._lock:
            self._secrets.clear()
            self._state = self._regex = None

    def redact(self, text: str) -> str:
        state = self._state
        if state is None:
            return text
        secrets, windows, ungated = state
        if not (ungated or "\\" in text or _any_window(text.lower(), windows)):
            return text
        self.searched += 1
        return self._search(secrets).sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(safe_message(record))
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = _EXC_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        if self._state is not None:
            for key, value in extra_fields(record).items():
                text = value if isinstance(value, str) else _safe_str(value)
                clean = self.redact(text)
                if clean != text:
                    setattr(record, key, clean)
        return True


def _any_window(low: str, windows: frozenset[str]) -> bool:
    return any(low[i:i + _WINDOW] in windows for i in range(0, len(low) - _WINDOW + 1, _STRIDE))


_EXC_FORMATTER = logging.Formatter()
SECRETS = SecretFilter()  # the process's filter, on the handler setup_logging installs


def register_secret(secret: bytes) -> None:
    """From now on, redact `secret` (at least 16 bytes) from every log line."""
    SECRETS.register(secret)


# ---- formats -----------------------------------------------------------------------------


def rfc3339(created: float) -> str:
    """UTC with milliseconds: 2026-01-31T12:00:00.123Z."""
    secs = math.floor(created)
    millis = min(999, int((created - secs) * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{millis:03d}Z"


def _jsonable(value: object, depth: int = 0) -> object:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth < MAX_DEPTH:
        if isinstance(value, dict):
            return {_safe_str(k): _jsonable(v, depth + 1) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [_jsonable(v, depth + 1) for v in value]
    return _safe_str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": safe_message(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        for key, value in extra_fields(record).items():
            doc[f"extra_{key}" if key in doc else key] = _jsonable(value)
        try:
            return json.dumps(doc, allow_nan=False)
        except (TypeError, ValueError):  # a dict key or value that slipped past _jsonable
            return json.dumps({k: _safe_str(v) for k, v in doc.items()})


class TextFormatter(logging.Formatter):
    """The classic line; a call whose arguments do not fit still gives one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.msg, record.args = safe_message(record), ()
        return super().format(record)


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise LogSetupError(f"unknown log format {fmt!r}; use one of {', '.join(FORMATS)}")


def setup_logging(level: str, fmt: str) -> None:
    """Log to stderr at `level` in `fmt` ("text" or "json"), through the secret filter.

    Calling it again replaces the handler it installed before (and no other)."""
    formatter = make_formatter(fmt)
    parsed = parse_level(level)
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _DaemonHandler):
            root.removeHandler(h)
    handler = _DaemonHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(quiet_libraries)
    handler.addFilter(SECRETS)
    root.addHandler(handler)
    root.setLevel(parsed)


class _DaemonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler setup_logging installs (so that it can find it again)."""
