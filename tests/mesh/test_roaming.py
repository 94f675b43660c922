"""The roaming policy (mesh/roaming.py) on its own: when the underlay is looked at, what an
address change or a STUN answer leads to, and the bounds on how often it reacts."""

from __future__ import annotations

from meshguard.mesh.roaming import (
    RECHECK,
    SETTLE,
    STUN_REFRESH,
    ProbeUnderlay,
    ReachOut,
    Reannounce,
    RestartStun,
    Roaming,
    UnderlayChanged,
)
from meshguard.nat.stun_client import NatType

PORT = 51821
OLD, NEW = "192.168.1.20", "10.44.0.7"
MAPPED = ("203.0.113.21", 40001)


def test_the_underlay_is_looked_at_periodically_and_soon_after_a_netlink_event() -> None:
    r = Roaming(hosts=(OLD,), port=PORT, now=100.0)
    assert r.tick(100.0) == []
    assert r.next_deadline() == 100.0 + RECHECK
    assert r.tick(100.0 + RECHECK) == [ProbeUnderlay()]
    assert r.tick(100.0 + RECHECK + 0.1) == []
    t = 100.0 + RECHECK + 0.5
    r.note_event(t)
    assert r.next_deadline() == t + SETTLE
    assert r.tick(t + SETTLE) == [ProbeUnderlay()]
    assert r.counters["underlay_events"] == 1


def test_the_same_addresses_change_nothing() -> None:
    r = Roaming(hosts=(OLD, "2001:db8::5"), port=PORT, now=0.0)
    assert r.observed(1.0, ["2001:db8::5", OLD]) == []
    assert r.observed(2.0, [OLD, OLD, "2001:db8::5"]) == []
    assert r.counters["underlay_changes"] == 0
    # only the first four are advertised: a fifth address is no change
    many = [f"192.0.2.{i}" for i in range(1, 6)]
    r = Roaming(hosts=tuple(many[:4]), port=PORT, now=0.0)
    assert r.observed(1.0, many) == []


def test_a_change_without_stun_is_re_announced_at_once() -> None:
    r = Roaming(hosts=(OLD,), port=PORT, now=0.0)
    acts = r.observed(5.0, [NEW])
    assert acts == [UnderlayChanged((OLD,), (NEW,)),
                    Reannounce(((NEW, PORT),), None, announce=True)]
    assert r.hosts == (NEW,) and r.counters["underlay_changes"] == 1
    assert r.observed(6.0, [NEW]) == []


def test_no_address_at_all_keeps_the_record_until_one_appears() -> None:
    r = Roaming(hosts=(OLD,), port=PORT, now=0.0)
    assert r.observed(1.0, []) == []
    assert r.observed(1.1, []) == []
    assert r.counters["underlay_lost"] == 1 and r.hosts == (OLD,)
    assert r.observed(2.0, [NEW])[0] == UnderlayChanged((OLD,), (NEW,))


def test_with_stun_the_record_waits_for_the_new_mapping() -> None:
    r = Roaming(hosts=(OLD,), port=PORT, now=0.0, stun=True)
    # the daemon's first run: the mapping goes first, nothing to tell anyone yet
    assert r.stun_finished(0.2, MAPPED, NatType.CONE) == [
        Reannounce((MAPPED, (OLD, PORT)), NatType.CONE, announce=False)]
    acts = r.observed(10.0, [NEW])
    assert acts == [UnderlayChanged((OLD,), (NEW,)), ReachOut(),
                    RestartStun(((NEW, PORT),))]
    new_map = ("203.0.113.99", 51821)
    assert r.stun_finished(10.1, new_map, NatType.CONE) == [
        Reannounce((new_map, (NEW, PORT)), NatType.CONE, announce=True)]
    assert r.counters["mapping_changes"] == 0  # a change of ours, not of the NAT's


def test_a_stun_run_that_finds_no_server_after_a_change_announces_the_local_endpoints() -> None:
    r = Roaming(hosts=(OLD,), port=PORT, now=0.0, stun=True)
    r.stun_finished(0.2, MAPPED, NatType.CONE)
    r.observed(10.0, [NEW])
    # the old mapping belonged to the old address: it is not advertised any more
    assert r.stun_finished(17.5, None, NatType.UNKNOWN) == [
        Reannounce(((NEW, PORT),), None, announce=True)]
    # a later run that finds no server either changes nothing
    assert r.stun_finished(110.0, None, NatType.UNKNOWN) == []


def test_stun_runs_again_periodically_and_a_new_mapping_is_re_announced() -> None:
    r = Roaming(hosts=(OLD,), port=PORT, now=0.0, stun=True)
    r.stun_finished(0.2, MAPPED, NatType.CONE)
    assert r.next_deadline() == RECHECK
    acts = r.tick(STUN_REFRESH)
    assert RestartStun(((OLD, PORT),)) in acts
    assert r.stun_finished(STUN_REFRESH + 0.1, MAPPED, NatType.CONE) == []  # same answer
    assert RestartStun(((OLD, PORT),)) in r.tick(2 * STUN_REFRESH)
    moved = ("203.0.113.21", 40002)
    assert r.stun_finished(2 * STUN_REFRESH + 0.1, moved, NatType.CONE) == [
        Reannounce((moved, (OLD, PORT)), NatType.CONE, announce=True, mapping_changed=True)]
    assert r.counters["mapping_changes"] == 1
    # a NAT type change alone is re-announced too
    r.tick(3 * STUN_REFRESH)
    out = r.stun_finished(3 * STUN_REFRESH + 0.1, moved, NatType.SYMMETRIC)
    assert out and isinstance(out[0], Reannounce) and out[0].nat_type == NatType.SYMMETRIC


def test_a_public_node_advertises_its_address_once() -> None:
    r = Roaming(hosts=(OLD,), port=PORT, now=0.0, stun=True)
    assert r.stun_finished(0.2, (OLD, PORT), NatType.PUBLIC) == [
        Reannounce(((OLD, PORT),), NatType.PUBLIC, announce=False)]


def test_announce_pins_the_advertised_host() -> None:
    r = Roaming(hosts=(OLD,), port=PORT, now=0.0, pinned=("198.51.100.4",))
    acts = r.observed(1.0, [NEW])
    assert acts[-1] == Reannounce((("198.51.100.4", PORT),), None, announce=True)


def test_a_flapping_interface_is_bounded() -> None:
    r = Roaming(hosts=(OLD,), port=PORT, now=0.0)
    changes = 0
    t = 0.0
    for i in range(40):
        t += 0.1
        acts = r.observed(t, [NEW if i % 2 == 0 else OLD])
        changes += sum(isinstance(a, UnderlayChanged) for a in acts)
    # a burst of 3, then one per 5 s: 4 s of flapping cost at most 3 reactions
    assert changes == 3
    assert r.counters["underlay_changes_deferred"] > 0
    # the deferred change is looked at again once a reaction is allowed
    assert r.next_deadline() <= t + 5.0
