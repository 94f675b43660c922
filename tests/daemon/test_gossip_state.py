"""The gossip high-water marks survive a restart, and a restarted node refuses what they cover."""

from __future__ import annotations

import os
from pathlib import Path

from meshguard.crypto.hashes import mac
from meshguard.crypto.keys import X25519PrivateKey
from meshguard.daemon.gossip_state import STATE_FILE, load_high_water, save_high_water
from meshguard.swim.membership import Membership
from meshguard.testing.rng import SeededRng
from meshguard.testing.simnet import SwimCluster
from meshguard.wire import gossip as g


def test_marks_round_trip_and_old_ones_are_dropped(tmp_path: Path) -> None:
    marks = {bytes([i]) * 32: 1000 + i for i in range(5)}
    save_high_water(tmp_path, marks, min_incarnation=1002)
    got, bad = load_high_water(tmp_path)
    assert bad == 0
    assert got == {k: v for k, v in marks.items() if v >= 1002}
    assert oct((tmp_path / STATE_FILE).stat().st_mode & 0o777) == "0o644"


def test_unreadable_lines_are_skipped_not_fatal(tmp_path: Path) -> None:
    good = "A" * 43 + "="
    (tmp_path / STATE_FILE).write_text(
        f"{good} 7\nnot-base64!! 5\n{good} x\n{'AAAA'} 3\n{good} {2**64}\n\n{good} 9 extra\n"
    )
    got, bad = load_high_water(tmp_path)
    assert got == {bytes(32): 7}
    assert bad == 5
    os.unlink(tmp_path / STATE_FILE)
    assert load_high_water(tmp_path) == ({}, 0)


def test_a_restarted_node_refuses_records_below_its_saved_marks(tmp_path: Path) -> None:
    c = SwimCluster(4, 3)
    c.start(join_window=0.5)
    c.run_until_true(lambda: c.converged(range(4)), limit=60)
    old = c.nodes[2].raw_record
    old_wg = c.wg_keys[2]
    c.nodes[2].update_self(c.net.now, wg_key=X25519PrivateKey.generate(b"\x31" * 32))
    c.run_until_true(
        lambda: next(r for r in c.nodes[0].members() if r.identity == c.ids[2]).incarnation
        == c.nodes[2].incarnation,
        limit=30,
    )
    save_high_water(tmp_path, c.nodes[0].high_water(), 0)
    # node 0 restarts, well within the records' maximum age, and reads its marks back
    now = c.net.now
    fresh = Membership(c.id_keys[0], c.wg_keys[0], [c.eps[0]], c.admission, SeededRng(5),
                       cache=c.cache, incarnation=int(now * 1000) + 1, now=now)
    fresh.remember(load_high_water(tmp_path)[0])
    key = c.cache.pair_key(old_wg, c.ids[2], c.wg_keys[0].public_key.raw, c.ids[0])
    assert key is not None
    body = g.encode_body(g.Packet(g.PING, c.ids[2], 5, entries=((g.TAG_RECORD, old),)))
    fresh.receive(now, now, body + mac(key, body), c.eps[2])
    assert fresh.state_of(c.ids[2]) is None
    assert fresh.stats["stale_record"] == 1
    # without the marks the same replay is accepted: that is what the file is for
    naive = Membership(c.id_keys[0], c.wg_keys[0], [c.eps[0]], c.admission, SeededRng(5),
                       cache=c.cache, incarnation=int(now * 1000) + 1, now=now)
    naive.receive(now, now, body + mac(key, body), c.eps[2])
    assert naive.state_of(c.ids[2]) == "alive"
