"""The guided demo runs start to finish and shows what it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshguard.demo import identity_demo


def test_identity_demo(capsys: pytest.CaptureFixture[str]) -> None:
    assert identity_demo() == 0
    out, err = capsys.readouterr()
    assert "ADMIT  (org certificate, beta." in out
    assert "REFUSE (node key revoked)" in out
    assert "refused with exit 1" in out
    assert "is revoked; pass --force" in err
    assert "vouch verifies with beta's identity key: True" in out
    assert "(186 bytes)" in out
    tmp = out.split("under ", 1)[1].split("\n", 1)[0]
    assert not Path(tmp).exists()  # cleaned up
