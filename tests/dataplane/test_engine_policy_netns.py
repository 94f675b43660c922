"""Engine.set_policy against the real kernel: the filtered engine on a TUN (virtio-net headers,
TSO) in a fresh namespace, kernel sockets behind it; its peer an engine on a SOCK_SEQPACKET
pair that the test writes packets into. IPv4 and IPv6, in each data-path mode: the thread
(default), the loop's path (MESHGUARD_DATAPATH_THREAD=0) and pure Python
(MESHGUARD_PURE_PYTHON=1). A denied UDP port and a denied listening TCP port see nothing, the
allowed ones get the packets (the kernel answers a SYN with a SYN-ACK), a reply to what a
kernel socket sent passes, an unsolicited packet to the same socket does not.

The namespace part runs this file as a script under `ip netns exec` (Python 3.11 has no setns).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from meshguard.testing.netns import Namespace, netns_skip_reason

SKIP = netns_skip_reason()
MODES = {"thread": {}, "loop": {"MESHGUARD_DATAPATH_THREAD": "0"},
         "python": {"MESHGUARD_PURE_PYTHON": "1"}}


@pytest.mark.netns
@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
@pytest.mark.parametrize("mode", list(MODES))
def test_policy_on_a_real_tun(mode: str) -> None:
    with Namespace.create("mgpol") as ns:
        env = {**os.environ, **MODES[mode]}
        r = subprocess.run(ns.argv([sys.executable, __file__, "--inner"]), env=env,
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["path"] == {"thread": "datapath=thread", "loop": "datapath=loop",
                           "python": "fastpath=python"}[mode]
    for fam in ("v4", "v6"):
        res = out[fam]
        assert res["allowed_udp"] and res["syn_ack_allowed"] and res["reply"], res
        assert not res["denied_udp"] and not res["syn_ack_denied"], res
        assert not res["unsolicited"], res
    c = out["counters"]
    # per family: the denied UDP, the denied SYN and the unsolicited packet; the allowed UDP
    # and SYN (and the SYN's retransmissions, if any) on their rules, one reply
    assert c["reasons"]["policy"] >= 6 and c["reasons"]["reply"] >= 2, c
    assert c["rule_packets"][0] >= 2 and c["rule_packets"][1] >= 2, c
    assert c["reasons"]["unparsed"] == 0, c


# -- the part that runs inside the namespace ------------------------------------------------


def _inner() -> None:  # pragma: no cover - runs in a subprocess
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import asyncio
    import socket
    import struct
    import time

    from helpers import FakeTun, tcp_packet, udp_packet

    from meshguard.crypto.keys import X25519PrivateKey
    from meshguard.dataplane.engine import Engine
    from meshguard.dataplane.offload import TCP_SYN
    from meshguard.dataplane.vnet import open_tun
    from meshguard.policy.table import (
        PROTO_TCP,
        PROTO_UDP,
        Chain,
        FlatRule,
        PolicyTable,
        RuleInfo,
    )
    from meshguard.testing.rng import SeededRng
    from meshguard.wireguard.device import Device

    addrs = {"v4": ("10.77.0.1", "10.77.0.2"), "v6": ("fd77::1", "fd77::2")}
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    tun = "mgpol0"
    fd = open_tun(tun)
    os.set_blocking(fd, False)
    subprocess.run(["ip", "addr", "add", "10.77.0.1/24", "dev", tun], check=True)
    subprocess.run(["ip", "-6", "addr", "add", "fd77::1/64", "dev", tun, "nodad"], check=True)
    subprocess.run(["ip", "link", "set", tun, "mtu", "1420", "up"], check=True)

    rng = SeededRng(9)
    ka, kb = X25519PrivateKey.generate(rng.bytes(32)), X25519PrivateKey.generate(rng.bytes(32))
    da, db = Device(SeededRng(1), ka), Device(SeededRng(2), kb)
    fake = FakeTun()
    rules = (RuleInfo("t", 1, "allow udp 7000"), RuleInfo("t", 2, "allow tcp 2222"),
             RuleInfo("t", 0, "deny"))
    policy = PolicyTable(True, (Chain((FlatRule(True, PROTO_UDP, 7000, 7000, 0),
                                       FlatRule(True, PROTO_TCP, 2222, 2222, 1)), False, 2),),
                         {}, 0, rules)

    def sock(fam: str, kind: int, port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET6 if fam == "v6" else socket.AF_INET, kind)
        s.setblocking(False)
        s.bind((addrs[fam][0], port))
        if kind == socket.SOCK_STREAM:
            s.listen()
        return s

    def got(s: socket.socket) -> bool:
        try:
            return bool(s.recv(100))
        except BlockingIOError:
            return False

    async def until(pred: object, what: str, t: float = 5.0) -> bool:
        end = time.monotonic() + t
        while time.monotonic() < end:
            if pred():  # type: ignore[operator]
                return True
            await asyncio.sleep(0.005)
        return False

    def syn_acks(dport: int, fam: str) -> int:
        n = 0
        for p in fake.received:
            v6 = p[0] >> 4 == 6
            l4 = 40 if v6 else 20
            if (v6 == (fam == "v6") and len(p) >= l4 + 14 and p[(6 if v6 else 9)] == 6
                    and struct.unpack_from("!H", p, l4)[0] == dport and p[l4 + 13] & 0x12 == 0x12):
                n += 1
        return n

    async def main() -> dict[str, object]:
        loop = asyncio.get_running_loop()
        ea, eb = Engine(da, fd), Engine(db, fake.engine_fd)
        ea.bind(0)
        eb.bind(0)
        pb, pa = da.add_peer(kb.public_key), db.add_peer(ka.public_key)
        pb.endpoint, pa.endpoint = ("127.0.0.1", eb.port), ("127.0.0.1", ea.port)
        da.set_allowed_ips(pb, ["10.77.0.2/32", "fd77::2/128"])
        db.set_allowed_ips(pa, ["10.77.0.0/24", "fd77::/64"])
        loop.add_reader(fake.peer.fileno(), fake.drain)
        ea.start(loop)
        eb.start(loop)
        ea.set_policy(policy)
        out: dict[str, object] = {}
        try:
            for fam in ("v4", "v6"):
                la, lb = (socket.inet_pton(socket.AF_INET6 if fam == "v6" else socket.AF_INET, a)
                          for a in addrs[fam])
                allowed, denied = sock(fam, socket.SOCK_DGRAM, 7000), sock(fam, socket.SOCK_DGRAM,
                                                                           7001)
                ssh, telnet = sock(fam, socket.SOCK_STREAM, 2222), sock(fam, socket.SOCK_STREAM,
                                                                        2323)
                asker = sock(fam, socket.SOCK_DGRAM, 7100)
                res: dict[str, bool] = {}
                fake.peer.send(udp_packet(lb, la, b"no", 5000, 7001))
                fake.peer.send(tcp_packet(lb, la, 1, b"", flags=TCP_SYN, sport=41000, dport=2323))
                fake.peer.send(udp_packet(lb, la, b"yes", 5000, 7000))
                fake.peer.send(tcp_packet(lb, la, 1, b"", flags=TCP_SYN, sport=41000, dport=2222))
                res["allowed_udp"] = await until(lambda s=allowed: got(s), "allowed udp")
                res["syn_ack_allowed"] = await until(lambda f=fam: syn_acks(2222, f) > 0, "syn-ack")
                # a kernel socket asks the peer; the peer's answer passes, a stranger's not
                asker.sendto(b"question", (addrs[fam][1], 7200))
                await until(lambda: any(p[-8:] == b"question" for p in fake.received), "question")
                fake.peer.send(udp_packet(lb, la, b"stranger", 7201, 7100))
                fake.peer.send(udp_packet(lb, la, b"answer", 7200, 7100))
                res["reply"] = await until(lambda s=asker: got(s), "the answer")
                await asyncio.sleep(0.3)  # anything still on its way lands meanwhile
                res["unsolicited"] = got(asker)
                res["denied_udp"] = got(denied)
                res["syn_ack_denied"] = syn_acks(2323, fam) > 0
                out[fam] = res
                for s in (allowed, denied, ssh, telnet, asker):
                    s.close()
            c = ea.policy_counters()
            out["counters"] = {"rule_packets": list(c.rule_packets), "reasons": c.reasons}
            desc = ea.describe_offloads()
            out["path"] = ("fastpath=python" if "fastpath=python" in desc else
                           "datapath=thread" if "datapath=thread" in desc else "datapath=loop")
        finally:
            loop.remove_reader(fake.peer.fileno())
            ea.close()
            eb.close()
            fake.close()
            os.close(fd)
        return out

    print(json.dumps(asyncio.run(main())))


if __name__ == "__main__" and sys.argv[1:] == ["--inner"]:
    _inner()
