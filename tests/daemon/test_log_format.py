"""daemon/log_format.py: JSON lines, the text line, levels, and the secret filter.

Every test builds its own logger and handler (a StringIO), so nothing here touches the root
logger's handlers except test_setup_logging_replaces_only_its_own_handler, which restores them.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from meshguard.daemon import log_format
from meshguard.daemon.log_format import (
    REDACTED,
    JsonFormatter,
    LogSetupError,
    SecretFilter,
    quiet_libraries,
    rfc3339,
    secret_encodings,
    set_level,
    setup_logging,
)

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Capture:
    """A logger whose one handler writes formatted lines to a buffer."""

    def __init__(self, fmt: str, secrets: SecretFilter | None = None) -> None:
        self.buf = io.StringIO()
        self.handler = logging.StreamHandler(self.buf)
        self.handler.setFormatter(log_format.make_formatter(fmt))
        self.handler.addFilter(quiet_libraries)
        if secrets is not None:
            self.handler.addFilter(secrets)
        self.logger = logging.getLogger(f"meshguard.test.{fmt}.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self.handler)

    def lines(self) -> list[str]:
        return self.buf.getvalue().splitlines()

    def docs(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines()]

    def close(self) -> None:
        self.logger.removeHandler(self.handler)


@pytest.fixture(params=["text", "json"])
def fmt(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def json_log() -> Iterator[Capture]:
    c = Capture("json")
    yield c
    c.close()


def test_json_line_has_the_documented_fields(json_log: Capture) -> None:
    json_log.logger.info("peer %s up after %.1f s", "db-1", 1.25, extra={"peer": "db-1",
                                                                          "rtt_ms": 3.5})
    [doc] = json_log.docs()
    assert doc["level"] == "info" and doc["logger"] == json_log.logger.name
    assert doc["msg"] == "peer db-1 up after 1.2 s"
    assert isinstance(doc["ts"], str) and TS.match(doc["ts"])
    assert doc["peer"] == "db-1" and doc["rtt_ms"] == 3.5
    assert "exc" not in doc and "stack" not in doc
    assert len(json_log.lines()) == 1


def test_rfc3339_is_utc_with_milliseconds() -> None:
    assert rfc3339(0.0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(1_767_225_600.9999) == "2026-01-01T00:00:00.999Z"
    assert rfc3339(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"


def test_json_carries_the_traceback_and_stack(json_log: Capture) -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        json_log.logger.exception("timer failed")
    json_log.logger.warning("here", stack_info=True)
    first, second = json_log.docs()
    assert first["level"] == "error" and first["msg"] == "timer failed"
    assert isinstance(first["exc"], str)
    assert "Traceback" in first["exc"] and "RuntimeError: boom\nsecond line" in first["exc"]
    assert isinstance(second["stack"], str) and "Stack (most recent call last)" in second["stack"]
    assert len(json_log.lines()) == 2  # the newlines are escaped: one line per record


class Unprintable:
    def __str__(self) -> str:
        raise ValueError("no str for you")

    __repr__ = __str__


def test_odd_calls_never_raise_and_give_one_line(fmt: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    errors: list[object] = []
    monkeypatch.setattr(logging.Handler, "handleError",
                        lambda self, record: errors.append(record))
    c = Capture(fmt)
    try:
        c.logger.info("%d members", "many")  # wrong type
        c.logger.info("%s and %s", "one")  # too few arguments
        c.logger.info("no placeholder", 1, 2)  # too many
        c.logger.info(Unprintable())  # a message object whose str raises
        c.logger.info("%s", Unprintable())
        c.logger.info({"a": 1})  # a non-string message
        c.logger.info("line\nbreak \udcff surrogate")
        c.logger.info("x", extra={"obj": Unprintable(), "nan": float("nan"), "raw": b"\x00",
                                  "deep": [[[[[["x"]]]]]], "key": {1: object()},
                                  "ts": "mine", "level": "mine too"})
    finally:
        c.close()
    assert errors == []
    lines = c.lines()
    assert len(lines) == (8 if fmt == "json" else 9)  # text keeps the message's own newline
    assert "%d members" in lines[0] and "'many'" in lines[0]
    assert "%s and %s" in lines[1] and "no placeholder" in lines[2]
    assert "unprintable" in lines[3] and "unprintable" in lines[4]
    if fmt == "json":
        docs = c.docs()
        assert docs[5]["msg"] == "{'a': 1}"
        assert docs[6]["msg"] == "line\nbreak \udcff surrogate"
        extra = docs[7]
        assert extra["obj"] == "<unprintable Unprintable>" and extra["nan"] == "nan"
        assert extra["raw"] == "b'\\x00'" and str(extra["key"]).startswith("{'1': '<object")
        assert extra["deep"] == [[[["[['x']]"]]]]
        assert extra["extra_ts"] == "mine" and extra["extra_level"] == "mine too"
        assert isinstance(extra["ts"], str) and TS.match(extra["ts"])


def test_text_line_is_unchanged() -> None:
    c = Capture("text")
    try:
        c.logger.warning("trust store: %s", "bad file")
    finally:
        c.close()
    [line] = c.lines()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING "
                        + re.escape(c.logger.name) + r": trust store: bad file", line)


def test_libraries_keep_only_their_warnings(fmt: str) -> None:
    c = Capture(fmt)
    lib = logging.getLogger("asyncio.test_log_format")
    lib.propagate = False
    lib.setLevel(logging.DEBUG)
    lib.addHandler(c.handler)
    try:
        lib.debug("chatter")
        lib.warning("a real problem")
    finally:
        lib.removeHandler(c.handler)
        c.close()
    text = "\n".join(c.lines())
    assert "chatter" not in text and "a real problem" in text


def test_levels_and_formats_are_checked() -> None:
    root = logging.getLogger()
    before = root.level
    try:
        for name, value in (("debug", 10), ("INFO", 20), ("warning", 30), ("error", 40)):
            set_level(name)
            assert root.level == value
        with pytest.raises(LogSetupError, match="unknown log level 'loud'; use one of debug"):
            set_level("loud")
        with pytest.raises(LogSetupError, match="unknown log format 'xml'"):
            setup_logging("info", "xml")
        with pytest.raises(LogSetupError, match="unknown log level"):
            setup_logging("verbose", "json")
        assert root.level == 40  # a refused call changed nothing
    finally:
        root.setLevel(before)


def test_setup_logging_replaces_only_its_own_handler(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        setup_logging("info", "text")
        setup_logging("debug", "json")  # again: replaces the first, keeps the others
        ours = [h for h in root.handlers if h not in before]
        assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
        assert all(h in root.handlers for h in before)
        logging.getLogger("meshguard.daemon").debug("hello %s", "json")
        set_level("warning")
        logging.getLogger("meshguard.daemon").info("not shown")
        err = capsys.readouterr().err
        [line] = [x for x in err.splitlines() if x.startswith("{")]
        assert json.loads(line)["msg"] == "hello json"
        assert "not shown" not in err
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
        root.setLevel(level)


# ---- the secret filter -------------------------------------------------------------------


def make_secrets() -> tuple[Ed25519PrivateKey, X25519PrivateKey, bytes]:
    return (Ed25519PrivateKey(bytes((i * 37 + 251) % 256 for i in range(32))),
            X25519PrivateKey.generate(bytes(range(100, 132))),
            bytes([0x27, 0x22, 0x5C, 0x0A]) * 8)  # quotes, backslash, newline: repr escapes


def visible(c: Capture, fmt: str) -> str:
    """What a reader of the lines sees: the text, or every JSON string value decoded."""
    if fmt == "text":
        return c.buf.getvalue()
    out: list[str] = []

    def walk(v: object) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                out.append(str(k))
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        else:
            out.append(str(v))

    for d in c.docs():
        walk(d)
    return "\n".join(out)


def leaks(secret: bytes, text: str) -> list[str]:
    """The encodings of `secret` found in `text` (the test's own list, not the filter's)."""
    found = []
    std, url = base64.b64encode(secret).decode(), base64.urlsafe_b64encode(secret).decode()
    for name, enc in (("base64", std[:40]), ("base64url", url[:40]), ("hex", secret.hex()),
                      ("HEX", secret.hex().upper()), ("repr", repr(secret)[2:-1])):
        if enc in text:
            found.append(name)
    return found


def test_a_log_call_with_a_secret_is_redacted(fmt: str) -> None:
    ident, wg, psk = make_secrets()
    secrets = SecretFilter()
    for s in (ident.seed, wg.raw, psk):
        secrets.register(s)
    c = Capture(fmt, secrets)
    seed = ident.seed
    try:
        c.logger.debug("seed %s", base64.b64encode(seed).decode())
        c.logger.debug("identity.key %s", base64.b64encode(ident.secret_bytes()).decode())
        c.logger.debug("url %s", base64.urlsafe_b64encode(wg.raw).decode().rstrip("="))
        c.logger.debug("hex %s / %s", wg.raw.hex(), wg.raw.hex().upper())
        c.logger.debug("raw %r", psk)
        c.logger.debug("embedded %s", base64.b64encode(b"xy" + wg.raw + b"z").decode())
        c.logger.debug("bytearray %r", bytearray(b"\x01" + seed))
        c.logger.debug(f"f-string {psk!r}")
        c.logger.debug("extra", extra={"key": wg.raw.hex(), "blob": psk})
        try:
            raise ValueError(f"bad key {base64.b64encode(psk).decode()}")
        except ValueError:
            c.logger.exception("failed")
        c.logger.info("public %s", ident.public_key.b64())  # public keys stay readable
    finally:
        c.close()
    text = visible(c, fmt)
    for s in (seed, wg.raw, psk):
        assert leaks(s, text) == [], text
    assert text.count(REDACTED) >= 10, text
    for whole in ("seed", "url", "raw b'"):  # a whole value goes, no tail left
        assert re.search(re.escape(whole) + r" ?<redacted>'?\n", text), whole
    assert ident.public_key.b64() in text


def test_the_same_calls_leak_without_the_filter(fmt: str) -> None:
    """The check above can fail: without the filter every encoding is in the output."""
    ident, wg, psk = make_secrets()
    c = Capture(fmt)
    try:
        c.logger.debug("a %s %s %s", base64.b64encode(ident.seed).decode(),
                       base64.urlsafe_b64encode(wg.raw).decode(), wg.raw.hex())
        c.logger.debug("b %s %r", wg.raw.hex().upper(), psk)
    finally:
        c.close()
    text = visible(c, fmt)
    assert leaks(ident.seed, text) == ["base64"]
    assert leaks(wg.raw, text) == ["base64url", "hex", "HEX"]
    assert leaks(psk, text) == ["repr"]


def test_every_alignment_of_base64_is_covered() -> None:
    secret = bytes(range(200, 232))
    f = SecretFilter()
    f.register(secret)
    for pad in range(6):
        blob = bytes(range(pad)) + secret + b"tail"
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(blob).decode()
            clean = f.redact(text)
            assert clean != text and REDACTED in clean
            # what survives is at most the few characters shared with the neighbours
            assert all(len(part) <= 10 for part in clean.split(REDACTED))


def test_encodings_are_what_a_log_line_would_show() -> None:
    secret = bytes(range(32))
    enc = secret_encodings(secret)
    assert base64.b64encode(secret).decode()[:42] in enc
    assert secret.hex() in enc
    assert repr(secret)[2:-1] in enc


def test_short_secrets_are_refused_and_no_secret_means_no_change() -> None:
    f = SecretFilter()
    with pytest.raises(ValueError, match="too short"):
        f.register(b"short")
    assert f.redact("anything at all 0011") == "anything at all 0011"
    f.register(bytes(32))
    f.register(bytes(32))  # twice is once
    assert f.redact("x" + bytes(32).hex() + "y") == f"x{REDACTED}y"


def test_ordinary_lines_skip_the_search_however_many_secrets() -> None:
    """200 secrets (a node with many WireGuard devices' preshared keys): lines with public
    keys, hex digests and addresses in them are not read by the per-secret search at all,
    and come out as they went in."""
    f = SecretFilter()
    f.register_all(hashlib.sha256(b"psk%d" % i).digest() for i in range(200))
    for i in range(1000):
        other = hashlib.sha256(b"public%d" % i).digest()
        line = (f"peer {base64.b64encode(other).decode()} ({other.hex()}) at "
                f"192.0.2.{i % 250}:51820 handshake completed, rtt {i / 7:.1f} ms")
        assert f.redact(line) == line
    assert f.searched == 0


@pytest.mark.parametrize("size", [16, 32, 64])
def test_an_encoding_at_any_offset_passes_the_gate(size: int) -> None:
    """The gate reads the line at a stride: every encoding of a secret is still found at
    every offset in the line, with text of any kind before it."""
    secret = hashlib.sha512(b"gate%d" % size).digest()[:size]
    f = SecretFilter()
    f.register(secret)
    f.register(hashlib.sha256(b"another").digest())
    for enc in sorted(secret_encodings(secret)):
        for offset in range(13):
            for filler in ("x", "\u0130", "A"):  # \u0130 lowers to two characters
                line = filler * offset + enc + " tail"
                clean = f.redact(line)
                assert enc not in clean and REDACTED in clean, (enc, offset, filler)
                if enc == secret.hex():
                    upper = filler * offset + enc.upper()
                    assert enc.upper() not in f.redact(upper), (offset, filler)
