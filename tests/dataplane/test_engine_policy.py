"""Engine.set_policy end to end on loopback (two engines, SOCK_SEQPACKET pairs for TUNs): a
denied port is dropped before the TUN, an allowed one passes, replies to what the node sent
pass, counters per rule and reason; on the loop's path and the data-path thread (and the pure
Python path: test_engine_pure_python.py runs this file again). No root needed; the real-TUN
version in a namespace is test_engine_policy_netns.py."""

from __future__ import annotations

import socket

import pytest

from meshguard.dataplane import datapath_thread
from meshguard.policy.table import PROTO_TCP, PROTO_UDP, Chain, FlatRule, PolicyTable, RuleInfo
from meshguard.wireguard.actions import WriteTun

from .helpers import A_IN, B_IN, World, icmp_echo, run, tcp_packet, udp_packet, until

THREAD = [False, True] if datapath_thread.available() else [False]
A, B = socket.inet_aton(A_IN), socket.inet_aton(B_IN)


def b_policy(w: World) -> PolicyTable:
    """On b: a's chain allows UDP 7000 and TCP 22; everyone else (the fallback) nothing."""
    rules = (RuleInfo("test", 1, "allow udp 7000"), RuleInfo("test", 2, "allow tcp 22"),
             RuleInfo("test", 0, "deny (default)"), RuleInfo("test", 0, "deny (fallback)"))
    mine = Chain((FlatRule(True, PROTO_UDP, 7000, 7000, 0), FlatRule(True, PROTO_TCP, 22, 22, 1)),
                 False, 2)
    return PolicyTable(True, (Chain((), False, 3), mine), {w.ka.public_key.raw: 1}, 0, rules)


@pytest.mark.parametrize("thread", THREAD, ids=lambda t: "thread" if t else "loop")
def test_policy_drops_denied_ports_and_passes_allowed_ones_and_replies(thread: bool) -> None:
    async def body(w: World) -> None:
        w.eb.set_policy(b_policy(w))
        first = udp_packet(A, B, b"first", 1000, 7000)
        w.ta.peer.send(first)
        await until(lambda: len(w.tb.received) == 1, "the first allowed packet")
        sent = [udp_packet(A, B, b"denied", 1000, 7001), tcp_packet(A, B, 1, b"ssh", dport=22),
                tcp_packet(A, B, 1, b"http", dport=80), icmp_echo(A, B),
                udp_packet(A, B, b"reply?", 9001, 9000), udp_packet(A, B, b"last", 1000, 7000)]
        for p in sent:
            w.ta.peer.send(p)
        await until(lambda: len(w.tb.received) == 4, "the packets that pass")
        assert w.tb.received[1:] == [sent[1], sent[3], sent[5]]
        # b sends from 9000 to a's 9001: a's answer passes; from another port it does not
        w.tb.peer.send(udp_packet(B, A, b"ask", 9000, 9001))
        await until(lambda: len(w.ta.received) == 1, "b's question")
        w.ta.peer.send(udp_packet(A, B, b"stranger", 9002, 9000))
        answer = udp_packet(A, B, b"answer", 9001, 9000)
        w.ta.peer.send(answer)
        await until(lambda: len(w.tb.received) == 5, "the answer")
        assert w.tb.received[4] == answer
        await until(lambda: w.eb.policy_counters().reasons["policy"] == 4, "the drops counted")
        c = w.eb.policy_counters()
        assert c.rule_packets == (2, 1, 4, 0)
        assert c.reasons == {"allowed": 3, "policy": 4, "unparsed": 0, "reply": 1, "icmp": 1}
        # no policy: everything passes again, nothing more is counted
        w.eb.set_policy(PolicyTable())
        w.ta.peer.send(sent[0])
        await until(lambda: len(w.tb.received) == 6, "the once denied packet")
        assert w.eb.policy_counters().reasons["policy"] == 4
        assert ("datapath=thread" if thread else "datapath=loop") in w.eb.describe_offloads()

    run(body, thread=thread)


def a_denied(w: World) -> PolicyTable:
    """b's policy once a may reach nothing any more (the same rules as b_policy, a's allows
    gone)."""
    rules = (RuleInfo("test", 0, "deny (default)"), RuleInfo("test", 0, "deny (fallback)"))
    return PolicyTable(True, (Chain((), False, 1), Chain((), False, 0)),
                       {w.ka.public_key.raw: 1}, 0, rules)


@pytest.mark.parametrize("thread", THREAD, ids=lambda t: "thread" if t else "loop")
def test_a_peer_denied_a_service_keeps_no_connection_to_it(thread: bool) -> None:
    """The attack: a opens a connection to b's TCP 22 while b's policy allows it, b answers,
    then b's policy stops allowing a. b's answers must not have made a's connection a tracked
    flow of b's: a's next packets on it are dropped like any other."""
    async def body(w: World) -> None:
        w.eb.set_policy(b_policy(w))
        syn = tcp_packet(A, B, 1, b"", sport=41000, dport=22)
        w.ta.peer.send(syn)
        await until(lambda: len(w.tb.received) == 1, "a's packet to the allowed port")
        w.tb.peer.send(tcp_packet(B, A, 1, b"banner", sport=22, dport=41000))  # b's answer
        await until(lambda: len(w.ta.received) == 1, "b's answer")
        w.eb.set_policy(a_denied(w))
        w.ta.peer.send(tcp_packet(A, B, 2, b"still here?", sport=41000, dport=22))
        await until(lambda: w.eb.policy_counters().reasons["policy"] == 1, "the drop")
        assert len(w.tb.received) == 1
        assert w.eb.policy_counters().reasons["reply"] == 0

    run(body, thread=thread)


def test_the_slow_path_s_tun_writes_are_judged_by_the_sending_peer_s_chain() -> None:
    """A transport message relayed through a member is opened by the Device (the slow path),
    which returns WriteTun actions: the same policy applies, by the chain of the peer whose
    allowed IPs hold the source."""
    async def body(w: World) -> None:
        w.eb.set_policy(b_policy(w))
        allowed = udp_packet(A, B, b"relayed, allowed", 1000, 7000)
        denied = udp_packet(A, B, b"relayed, denied", 1000, 7001)
        stranger = udp_packet(socket.inet_aton("10.9.9.9"), B, b"no peer", 1000, 7000)
        w.eb.execute([WriteTun(denied), WriteTun(stranger), WriteTun(allowed)])
        await until(lambda: len(w.tb.received) == 1, "the allowed packet")
        assert w.tb.received == [allowed]
        c = w.eb.policy_counters()
        assert c.rule_packets == (1, 0, 1, 1)  # a's UDP 7000, a's default, the fallback
        assert c.reasons["policy"] == 2

    run(body, thread=False)
