"""Index table and the per-peer timer state machine."""

from __future__ import annotations

from meshguard.testing.rng import SeededRng
from meshguard.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    NEW_HANDSHAKE_AFTER,
    REKEY_TIMEOUT,
    ZERO_KEYS_AFTER,
)
from meshguard.wireguard.index import IndexTable
from meshguard.wireguard.timers import PeerTimers, Timer


def test_index_table_unique_random() -> None:
    t: IndexTable[int] = IndexTable(SeededRng(5))
    idx = [t.new_index(i) for i in range(2000)]
    assert len(set(idx)) == 2000 and 0 not in idx
    assert max(idx) > 2**31  # 32-bit range is used
    assert t.get(idx[10]) == 10
    t.replace(idx[10], 99)
    assert t.get(idx[10]) == 99
    t.remove(idx[10])
    assert t.get(idx[10]) is None and idx[10] not in t and len(t) == 1999


def test_timer_events() -> None:
    t = PeerTimers()
    assert t.next_deadline() is None
    t.handshake_initiated(100.0, 0.2)
    assert t.next_deadline() == 100.0 + REKEY_TIMEOUT + 0.2
    assert t.expired(104.0) == []
    assert t.expired(105.3) == [Timer.RETRANSMIT_HANDSHAKE]
    assert t.expired(106.0) == []  # disarmed once fired
    t.handshake_initiated(110.0, 0.0)
    t.handshake_complete()
    assert t.retransmit_handshake is None and t.handshake_attempts == 0
    t.session_derived(110.0)
    assert t.zero_keys == 110.0 + ZERO_KEYS_AFTER
    # data sent arms new_handshake once; an authenticated receive cancels it
    t.data_sent(120.0)
    t.data_sent(121.0)
    assert t.new_handshake == 120.0 + NEW_HANDSHAKE_AFTER
    t.any_authenticated_received()
    assert t.new_handshake is None
    # data received arms the passive keepalive; a second one asks for another
    t.data_received(130.0)
    t.data_received(131.0)
    assert t.send_keepalive == 130.0 + KEEPALIVE_TIMEOUT and t.need_another_keepalive
    t.any_authenticated_sent()
    assert t.send_keepalive is None
    # persistent keepalive only when enabled
    t.traversal(140.0, 0)
    assert t.persistent_keepalive is None
    t.traversal(140.0, 25)
    assert t.persistent_keepalive == 165.0
    assert t.expired(165.0) == [Timer.PERSISTENT_KEEPALIVE]
    t.stop_all()
    assert t.next_deadline() is None
