"""`meshguard connect`: pair two nodes without a seed, by exchanging `mg://` tokens
(docs/pairing.md).

    A$ meshguard connect --generate [--in MINUTES] [--stun HOST:PORT]
         prints an offer token, then waits for the reply token on stdin
    B$ meshguard connect --join mg://OFFER [--stun HOST:PORT]
         prints a reply token for A to paste

Both then probe each other's endpoints at the punch time the offer names (nat/pairing_punch.py)
from the UDP port `up` will use, so the NAT mappings they open are the daemon's. On success
each side trusts the other (authorized_keys/<name>.pub) and saves the endpoint that answered
as a seed (identity/saved_seeds.py), which `meshguard up` joins through. The tokens are the
original Zig meshguard's command shape and layout, signed (identity/pairing_token.py).

The command holds the port only while it runs; a running daemon holds it, so `connect` asks
for `meshguard down` first.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import select
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from meshguard.cli.daemon_commands import DEFAULT_PORT, STUN_PORT, UsageError, parse_seed
from meshguard.errors import MeshguardError

if TYPE_CHECKING:
    from meshguard.identity.pairing_token import PairingToken

DEFAULT_IN = 1.0  # minutes until the punch (the original's default)
MAX_IN = 23 * 60  # minutes; a token is valid for at most a day
PUNCH_WINDOW = 60  # seconds per attempt (the original's)
ATTEMPTS = 3
IDLE = 60.0  # seconds between attempts
KEEPALIVE = 20.0  # seconds between STUN refreshes of the NAT mapping while waiting
MAX_LOCAL = 6  # local endpoints a token carries


class PairingError(MeshguardError):
    """The pairing could not be completed (the message says why and what to try)."""


def _clock() -> tuple[float, float]:
    return time.monotonic(), time.time()


def _utc(t: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(t))


@dataclass
class _Port:
    """The UDP port `up` will use, dual-stack where the host has IPv6."""

    sock: socket.socket
    v6: bool

    @classmethod
    def bind(cls, port: int) -> _Port:
        problem: OSError | None = None
        for family in (socket.AF_INET6, socket.AF_INET):  # IPv4 alone where IPv6 is off
            try:
                s = socket.socket(family, socket.SOCK_DGRAM)
            except OSError as exc:
                problem = exc
                continue
            try:
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
            except OSError as exc:
                s.close()
                if exc.errno == errno.EADDRINUSE:
                    raise PairingError(
                        f"UDP port {port} is in use (is `meshguard up` running? `connect` "
                        "needs the port the daemon will use: run `meshguard down` first, or "
                        "pick --port)") from None
                problem = exc
                continue
            s.setblocking(False)
            return cls(s, family == socket.AF_INET6)
        assert problem is not None
        raise PairingError(f"cannot bind UDP port {port}: {problem.strerror}; pick another "
                           "--port")

    def send(self, data: bytes, ep: tuple[str, int]) -> None:
        from meshguard.sansio import map_host

        host = map_host(ep[0]) if self.v6 else ep[0]
        with contextlib.suppress(OSError):  # unreachable candidates are normal while punching
            self.sock.sendto(data, (host, ep[1]))

    def recv_all(self) -> list[tuple[bytes, tuple[str, int]]]:
        from meshguard.sansio import unmap_host

        out = []
        for _ in range(256):
            try:
                data, addr = self.sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # an ICMP error from an earlier send
            out.append((data, (unmap_host(str(addr[0]).split("%")[0]), int(addr[1]))))
        return out

    def wait(self, timeout: float, also: TextIO | None = None) -> bool:
        """Wait for a datagram (or a line on `also`); True if `also` is readable."""
        fds: list[int] = [self.sock.fileno()] + ([also.fileno()] if also is not None else [])
        ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        return also is not None and also.fileno() in ready

    def close(self) -> None:
        self.sock.close()


def _discover(port: _Port, servers: Sequence[tuple[str, int]], local: list[tuple[str, int]]
              ) -> tuple[tuple[str, int] | None, int]:
    """The STUN mapping of the port and the NAT type in the token's numbering."""
    from meshguard.identity import pairing_token as tok
    from meshguard.nat.stun_client import NatType, StunClient
    from meshguard.rng import SystemRng
    from meshguard.sansio import SendDatagram
    from meshguard.wire.stun import is_stun

    if not servers:
        return None, tok.NAT_UNKNOWN
    client = StunClient(SystemRng(), servers, local=local)
    now, _ = _clock()
    for s in client.start(now):
        port.send(s.data, s.endpoint)
    while not client.done:
        now, wall = _clock()
        for a in client.tick(now, wall):
            if isinstance(a, SendDatagram):
                port.send(a.data, a.endpoint)
        dl = client.next_deadline()
        port.wait(0.2 if dl is None else min(0.2, dl - now))
        for data, src in port.recv_all():
            if is_stun(data):
                client.receive(now, wall, data, src)
    numbering = {NatType.PUBLIC: tok.NAT_PUBLIC, NatType.CONE: tok.NAT_CONE,
                 NatType.SYMMETRIC: tok.NAT_SYMMETRIC}
    return client.mapped, numbering.get(client.nat_type, tok.NAT_UNKNOWN)


def _local_endpoints(port: int) -> list[tuple[str, int]]:
    from meshguard.daemon.host_probe import local_addresses

    try:
        hosts = local_addresses("")
    except Exception:  # no netlink here: the token carries the STUN mapping only
        hosts = []
    return [(h, port) for h in hosts[:MAX_LOCAL]]


def _nat_label(nat: int) -> str:
    return {0: "no NAT", 1: "cone NAT", 2: "symmetric NAT"}.get(nat, "NAT type unknown")


class _Pairing:
    """One `connect` run: the keys, the port, this side's token."""

    def __init__(self, args: argparse.Namespace, out: TextIO) -> None:
        from meshguard.config import resolve_config_dir
        from meshguard.identity import store
        from meshguard.identity.trust import TrustStore
        from meshguard.identity.wg_key_source import node_wireguard_key

        self.args = args
        self.out = out
        self.cfg = resolve_config_dir()
        self.identity = store.load_identity(self.cfg)
        self.wg = node_wireguard_key(self.cfg, self.identity).key
        self.trust = TrustStore.load(self.cfg)
        self.port_no: int = args.port
        self.port: _Port | None = None
        self.mapped: tuple[str, int] | None = None
        self.nat = 3
        self.locals: list[tuple[str, int]] = []
        self.stun: list[tuple[str, int]] = []

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def check_peer(self, t: PairingToken) -> None:
        from meshguard.crypto.keys import b64encode

        if t.identity_key == self.identity.public_key.raw:
            raise PairingError("the token is this node's own; run --join on the other node")
        if self.trust.is_key_revoked(t.identity_key):
            raise PairingError(f"the peer {b64encode(t.identity_key)} is revoked here; lift "
                               "the revocation with `meshguard trust KEY --force` first")
        name = self.trust_name(t.identity_key)
        taken = self.trust.peers.get(name)
        if taken is not None and taken != t.identity_key:
            raise PairingError(f"the trust name {name!r} is already used for another key; "
                               "choose another --name")

    def trust_name(self, key: bytes) -> str:
        """The name the peer is (or will be) trusted under."""
        names = self.trust.peer_names(key)
        if names:
            return names[0]
        return str(self.args.name or f"peer-{key[:4].hex()}")

    def open(self) -> _Port:
        from meshguard.daemon.host_probe import resolve_seeds

        self.stun = resolve_seeds([parse_seed(s, STUN_PORT) for s in self.args.stun])
        self.port = _Port.bind(self.port_no)
        self.locals = _local_endpoints(self.port_no)
        self.mapped, self.nat = _discover(self.port, self.stun, self.locals)
        if self.mapped is not None:
            self.say(f"  public endpoint: {self.mapped[0]}:{self.mapped[1]} "
                     f"({_nat_label(self.nat)})")
        elif self.stun:
            self.say("  warning: no STUN server answered; the token carries local addresses "
                     "only")
        else:
            self.say("  no --stun server given: the token carries local addresses only "
                     "(enough on one LAN or with a public address)")
        if self.nat == 2:
            self.say("  warning: symmetric NAT: the punch will likely fail")
        return self.port

    def token(self, punch_time: int, expires: int, nonce: bytes, role: int,
              reply_to: bytes) -> bytes:
        from meshguard.identity import pairing_token as tok
        from meshguard.identity.addressing import mesh_ipv4

        reflexive = self.mapped if self.mapped and ":" not in self.mapped[0] else None
        extra = [e for e in self.locals if e != reflexive]
        if self.mapped is not None and reflexive is None:
            extra.append(self.mapped)
        pub = self.identity.public_key.raw
        v4_stun = [s for s in self.stun if ":" not in s[0]]
        t = tok.PairingToken(
            identity_key=pub, wg_key=self.wg.public_key.raw, reflexive=reflexive,
            mesh_ipv4=str(mesh_ipv4(pub)), punch_time=punch_time, punch_window=PUNCH_WINDOW,
            nonce=nonce, stun_server=v4_stun[0] if v4_stun else None, nat_type=self.nat,
            role=role, expires=expires, reply_to=reply_to,
            endpoints=tuple(extra[:tok.MAX_ENDPOINTS]))
        return tok.sign(t, self.identity)

    def keepalive(self) -> None:
        from meshguard.rng import SystemRng
        from meshguard.wire.stun import TXID_LEN, encode_binding_request

        assert self.port is not None
        if self.stun:
            self.port.send(encode_binding_request(SystemRng().bytes(TXID_LEN)), self.stun[0])
        self.port.recv_all()  # nothing is expected before the punch

    # the punch ----------------------------------------------------------------------------

    def punch(self, peer: PairingToken, offer_nonce: bytes, reply_nonce: bytes, own_nonce: bytes,
              punch_time: int, window: int) -> tuple[str, int]:
        from meshguard.errors import CryptoError
        from meshguard.identity.saved_seeds import format_endpoint
        from meshguard.nat.pairing_punch import (
            PairingPunch,
            PairingPunched,
            PairingPunchFailed,
            probe_key,
            punch_windows,
        )
        from meshguard.rng import SystemRng
        from meshguard.sansio import SendDatagram

        assert self.port is not None
        try:
            key = probe_key(self.wg, peer.wg_key, offer_nonce, reply_nonce)
        except CryptoError:
            raise PairingError("the peer's token carries an unusable WireGuard key") from None
        now, wall = _clock()
        core = PairingPunch(
            rng=SystemRng(), key=key, own_nonce=own_nonce,
            own_identity=self.identity.public_key.raw, peer_nonce=peer.nonce,
            peer_identity=peer.identity_key, candidates=list(peer.candidates()),
            windows=punch_windows(now, wall, punch_time, window, ATTEMPTS, IDLE))
        if not core.candidates:
            raise PairingError("the peer's token carries no endpoint to reach it at")
        wait = punch_time - wall
        if wait > 0:
            self.say(f"  punch in {wait:.0f} s (at {_utc(punch_time)}): waiting...")
        next_keepalive = now + KEEPALIVE
        announced = -1
        while True:
            now, wall = _clock()
            acts = core.tick(now, wall)
            for data, src in self.port.recv_all():
                acts += core.receive(now, wall, data, src)
            for a in acts:
                if isinstance(a, SendDatagram):
                    self.port.send(a.data, a.endpoint)
                elif isinstance(a, PairingPunched):
                    self.say(f"  path proven: {a.endpoint[0]}:{a.endpoint[1]} answered "
                             f"(attempt {a.attempt}, {core.counters['probes_sent']} probes "
                             "sent)")
                    return a.endpoint
                elif isinstance(a, PairingPunchFailed):
                    raise PairingError(
                        f"no direct path to the peer after {a.attempts} attempts (a symmetric "
                        "NAT or a firewall on either side? both must run `connect` at the "
                        "same time)")
            attempt = next((i for i, (s, e) in enumerate(core.windows) if s <= now < e), -1)
            if attempt != announced and attempt >= 0 and core.proven is None:
                self.say(f"  punching (attempt {attempt + 1}/{ATTEMPTS}) to "
                         + ", ".join(format_endpoint(e) for e in core.candidates))
                announced = attempt
            if now >= next_keepalive and not any(s <= now < e for s, e in core.windows):
                self.keepalive()
                next_keepalive = now + KEEPALIVE
            dl = core.next_deadline()
            self.port.wait(1.0 if dl is None else min(1.0, dl - now))

    def finish(self, peer: PairingToken, endpoint: tuple[str, int]) -> None:
        from meshguard.crypto.keys import b64encode
        from meshguard.identity import saved_seeds
        from meshguard.identity.trust import TrustStore

        self.trust = trust = TrustStore.load(self.cfg)  # as it is now, after the punch
        name = self.trust_name(peer.identity_key)
        if trust.peer_names(peer.identity_key):
            self.say(f"  peer already trusted as {name}")
        else:
            path = trust.add(name, peer.identity_key)
            self.say(f"  peer trusted as {name} ({b64encode(peer.identity_key)}) -> {path}")
        seeds = saved_seeds.save(self.cfg, name, peer.identity_key, endpoint)
        ep = saved_seeds.format_endpoint(endpoint)
        self.say(f"  seed {ep} saved in {seeds}")
        self.say(f"\ndirect path to {name} ({peer.mesh_ipv4}) at {ep}; start the mesh with "
                 "`meshguard up` (it joins the saved seeds), on both nodes")


def _describe(t: PairingToken) -> str:
    from meshguard.crypto.keys import b64encode
    from meshguard.identity.saved_seeds import format_endpoint

    eps = ", ".join(format_endpoint(e) for e in t.candidates()) or "no endpoint"
    return (f"key {b64encode(t.identity_key)}, mesh {t.mesh_ipv4}, {_nat_label(t.nat_type)}, "
            f"at {eps} (check the key with the peer: whoever made the token is trusted)")


def _read_reply(pairing: _Pairing, port: _Port, until: float, stdin: TextIO) -> str:
    next_keepalive = time.monotonic() + KEEPALIVE
    while True:
        now, wall = _clock()
        if wall >= until:
            raise PairingError("no response token arrived before the last punch window "
                               "closed; run `meshguard connect --generate` again")
        if now >= next_keepalive:
            pairing.keepalive()
            next_keepalive = now + KEEPALIVE
        if port.wait(min(1.0, until - wall), stdin):
            line = stdin.readline()
            if not line:
                raise PairingError("stdin closed before a response token arrived; paste "
                                   "the peer's mg:// token")
            words = line.split()
            if words:  # the token, also when pasted with the words around it
                return next((w for w in reversed(words) if w.startswith("mg://")), line.strip())
        port.recv_all()


def _decode(text: str, what: str) -> tuple[PairingToken, bytes]:
    """tok.decode, with the fix added to its one line."""
    from meshguard.identity import pairing_token as tok

    try:
        return tok.decode(text)
    except tok.PairingTokenError as exc:
        raise tok.PairingTokenError(f"{exc}; copy {what} again, whole, or ask the peer for a "
                                    "new one") from None


def _generate(pairing: _Pairing, minutes: float, stdin: TextIO) -> int:
    from meshguard.identity import pairing_token as tok
    from meshguard.rng import SystemRng

    port = pairing.open()
    _, wall = _clock()
    punch_time = int(wall + minutes * 60 + 0.999)
    expires = punch_time + PUNCH_WINDOW
    nonce = SystemRng().bytes(tok.NONCE_LEN)
    offer = pairing.token(punch_time, expires, nonce, tok.ROLE_OFFER, bytes(tok.REPLY_TO_LEN))
    digest = tok.offer_digest(offer)
    from meshguard.identity.addressing import mesh_ipv4

    pairing.say(f"  your mesh IP: {mesh_ipv4(pairing.identity.public_key.raw)}")
    pairing.say(f"  punch at {_utc(punch_time)}; the token is valid until {_utc(expires)}")
    pairing.say("\nSend this command to your peer:\n\n  meshguard connect --join "
                f"{tok.to_uri(offer)}\n")
    pairing.say("Paste the peer's response token here:")
    last_end = punch_time + ATTEMPTS * PUNCH_WINDOW + (ATTEMPTS - 1) * IDLE
    text = _read_reply(pairing, port, last_end, stdin)
    reply, _ = _decode(text, "the peer's response token")
    if reply.role != tok.ROLE_REPLY:
        raise tok.PairingTokenError("that is an offer token, not a response; paste the token "
                                    "`connect --join` printed on the peer")
    if reply.reply_to != digest or reply.punch_time != punch_time:
        raise tok.PairingTokenError("the response token answers another offer; the peer must "
                                    "join with the token printed above")
    if reply.expires != expires or reply.punch_window != PUNCH_WINDOW:
        raise tok.PairingTokenError("the response token changes the offer's schedule; the "
                                    "peer must join with the token printed above")
    pairing.check_peer(reply)
    pairing.say(f"\n  peer: {_describe(reply)}")
    ep = pairing.punch(reply, nonce, reply.nonce, nonce, punch_time, PUNCH_WINDOW)
    pairing.finish(reply, ep)
    return 0


def _join(pairing: _Pairing, offer: PairingToken, offer_bin: bytes) -> int:
    from meshguard.identity import pairing_token as tok
    from meshguard.rng import SystemRng

    pairing.check_peer(offer)
    pairing.say(f"  peer: {_describe(offer)}")
    pairing.open()
    nonce = SystemRng().bytes(tok.NONCE_LEN)
    reply = pairing.token(offer.punch_time, offer.expires, nonce, tok.ROLE_REPLY,
                          tok.offer_digest(offer_bin))
    pairing.say("\nPaste this response token on your peer's terminal:\n\n  "
                f"{tok.to_uri(reply)}\n")
    ep = pairing.punch(offer, offer.nonce, nonce, nonce, offer.punch_time, offer.punch_window)
    pairing.finish(offer, ep)
    return 0


def cmd_connect(args: argparse.Namespace) -> int:
    from meshguard.identity import pairing_token as tok

    if not 0 < args.port < 65535:
        raise UsageError("--port must be between 1 and 65534")
    if args.name is not None:
        from meshguard.identity.names import is_dns_label

        if not is_dns_label(args.name):
            raise UsageError(f"--name must be a DNS label (letters, digits, '-'), got "
                             f"{args.name!r}")
    if args.join is not None:
        if args.minutes is not None:
            raise UsageError("--in goes with --generate (the offer names the punch time)")
        offer, offer_bin = _decode(args.join, "the token")  # fails before anything else
        if offer.role != tok.ROLE_OFFER:
            raise tok.PairingTokenError("that is a response token; --join takes the token "
                                        "`connect --generate` printed")
        problem = tok.expiry_problem(offer, time.time())
        if problem is not None:
            raise tok.PairingTokenError(problem)
        pairing = _Pairing(args, sys.stdout)
        try:
            return _join(pairing, offer, offer_bin)
        finally:
            if pairing.port is not None:
                pairing.port.close()
    minutes = DEFAULT_IN if args.minutes is None else args.minutes
    if not 0 < minutes <= MAX_IN:
        raise UsageError(f"--in takes minutes, more than 0 and at most {MAX_IN}")
    pairing = _Pairing(args, sys.stdout)
    try:
        return _generate(pairing, minutes, sys.stdin)
    finally:
        if pairing.port is not None:
            pairing.port.close()


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of minutes: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"not a number of minutes: {text!r}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `connect` to the parser."""
    p = sub.add_parser("connect", help="pair with one peer directly by exchanging mg:// "
                                       "tokens (no seed needed)",
                       description="Pair two nodes without a seed: --generate prints a token "
                                   "and waits for the peer's response token on stdin; --join "
                                   "prints that response; both then punch through their NATs "
                                   "at the agreed time, trust each other and save the peer as "
                                   "a seed for `meshguard up`.")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--generate", action="store_true", help="make an offer token")
    mode.add_argument("--join", metavar="mg://TOKEN", help="answer a peer's offer token")
    p.add_argument("--in", dest="minutes", type=_minutes, default=None, metavar="MINUTES",
                   help=f"punch this many minutes from now (default {DEFAULT_IN:g}); the "
                        f"token is valid until the end of that punch window "
                        f"({PUNCH_WINDOW} s later)")
    p.add_argument("--stun", action="append", default=[], metavar="HOST:PORT",
                   help="STUN server to learn the public endpoint from (repeatable)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"the UDP port `meshguard up` will use (default {DEFAULT_PORT})")
    p.add_argument("--name", help="trust the peer under this name (default peer-<hex>)")
    p.set_defaults(func=cmd_connect)

