"""The `seeds` file `meshguard connect` writes and `meshguard up` joins
(identity/saved_seeds.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from meshguard.crypto.keys import b64encode
from meshguard.errors import ConfigError
from meshguard.identity import saved_seeds

A, B = bytes([1]) * 32, bytes([2]) * 32


def test_save_load_and_replace(tmp_path: Path) -> None:
    saved_seeds.save(tmp_path, "peer-a", A, ("203.0.113.21", 51821))
    saved_seeds.save(tmp_path, "peer-b", B, ("2001:db8::7", 51821))
    assert saved_seeds.load(tmp_path) == [("203.0.113.21", 51821), ("2001:db8::7", 51821)]
    # pairing A again replaces its entry, and B's stays
    saved_seeds.save(tmp_path, "peer-a", A, ("203.0.113.99", 40000))
    assert saved_seeds.load(tmp_path) == [("2001:db8::7", 51821), ("203.0.113.99", 40000)]
    text = (tmp_path / "seeds").read_text()
    assert text == (f"# peer-b {b64encode(B)}\n[2001:db8::7]:51821\n"
                    f"# peer-a {b64encode(A)}\n203.0.113.99:40000\n")


def test_reads_the_originals_file_and_keeps_foreign_lines(tmp_path: Path) -> None:
    # the original appends bare `host:port` lines
    (tmp_path / "seeds").write_text("198.51.100.7:51821\n\n# mine\nseed.example.org:51821\n"
                                    "198.51.100.7:51821\n")
    assert saved_seeds.load(tmp_path) == [("198.51.100.7", 51821), ("seed.example.org", 51821)]
    saved_seeds.save(tmp_path, "peer-a", A, ("203.0.113.21", 51821))
    assert (tmp_path / "seeds").read_text().startswith(
        "198.51.100.7:51821\n\n# mine\nseed.example.org:51821\n")


def test_no_file_is_no_seed(tmp_path: Path) -> None:
    assert saved_seeds.load(tmp_path) == []


@pytest.mark.parametrize("line", ["198.51.100.7", "host:port", "1.2.3.4:0", "1.2.3.4:70000",
                                  "[fe80::1:51821", "a b:1", "::1:51821"])
def test_a_bad_line_is_an_error_naming_it(tmp_path: Path, line: str) -> None:
    (tmp_path / "seeds").write_text(f"# ok\n{line}\n")
    with pytest.raises(ConfigError, match="seeds line 2"):
        saved_seeds.load(tmp_path)


def test_binary_junk_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "seeds").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8"):
        saved_seeds.load(tmp_path)


def test_up_refuses_a_bad_seeds_file_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "seeds").write_text("not a seed\n")
    r = subprocess.run([sys.executable, "-m", "meshguard", "up", "--run-dir",
                        str(tmp_path / "run")],
                       env={**os.environ, "MESHGUARD_CONFIG_DIR": str(tmp_path)},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "seeds line 1" in r.stderr, r.stderr
