"""The Python side of the data-path thread (docs/performance.md#data-path-thread).

    dp = DataPathThread(engine)          # after the engine set up its socket and TUN
    dp.start(loop)                       # tables pushed, thread started, wake fd on the loop
    dp.sync()                            # after anything that may have changed the tables
    dp.close()                           # thread stopped and joined, last notes taken

The C `DataPath` (dataplane/_fastpath.c) moves transport data between the TUN and the UDP
socket in a thread of its own, without the GIL, under tables this class writes from the
fast-path port's `datapath_tables()` whenever the port's `generation` moved: per peer its
endpoint (as a raw socket address) and current send keys, the live receiver indices (with
the "next" flag: the thread promotes such keys to the peer's send keys on their first
authenticated message), and the allowed-IPs routes; per peer also its public key, which
names its policy chain (the thread judges decrypted packets and tracks TUN reads with the
engine's PolicyFilter: dataplane/policy_filter.py). Every keypair in the tables shares its
send counter and replay window with the thread through a C `KeyState` (Keypair.share), so the
Device's own sends and receives never reuse a nonce or accept a counter twice.

Python is woken through the DataPath's eventfd (an asyncio reader) and drains: TUN reads the
thread could not send (no session, no endpoint, a relayed peer) go to the engine's TUN path
(the slow path queues them and starts a handshake); datagrams that are not transport data
(after the C handshake guard) to the engine's receive batch; the per-keypair notes to the
port's note_sent / note_received, so the Device's timers, re-keying and roaming run as with
the loop's path; drop and engine counters into the Device's counters and EngineStats.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import TYPE_CHECKING

from meshguard.dataplane.udp_io import EngineStats, endpoint_cached, raw_sockaddr
from meshguard.sansio import Endpoint
from meshguard.wireguard.actions import Action
from meshguard.wireguard.keypair import Keypair
from meshguard.wireguard.transport import DROP_REASONS

if TYPE_CHECKING:
    from meshguard.dataplane._fastpath import DataPath, HandshakeGuard, KeyState
    from meshguard.dataplane.engine import Engine

try:
    from meshguard.dataplane import _fastpath as _c
except ImportError:  # not built: the engine keeps the loop's path
    _c = None  # type: ignore[assignment]

__all__ = ["DataPathThread", "available"]

_DROPS = frozenset(DROP_REASONS) | {"no_route"}
# what the thread noted for one keypair: sent packets and bytes, received packets, bytes and
# keepalives, the source of the last received (a raw socket address)
_CNote = tuple["KeyState", int, int, int, int, int, bytes | None]
_Note = tuple[Keypair, int, int, int, int, int, bytes | None]
_EP_CACHE_MAX = 4096


def available() -> bool:
    """The C module with the data-path thread is built (and not switched off)."""
    if os.environ.get("MESHGUARD_PURE_PYTHON", "") not in ("", "0"):
        return False
    return _c is not None and hasattr(_c, "DataPath")


class DataPathThread:
    """The engine's data-path thread: its tables, its wake-ups, what it hands up."""

    def __init__(self, engine: Engine) -> None:
        assert _c is not None and engine.sock is not None
        self.engine = engine
        self.c: DataPath = _c.DataPath(engine.tun_fd, engine.sock.fileno(), engine.vnet,
                                       engine.tun_tso, engine.gso)
        self.family = engine.sock.family
        self.generation: int | None = None
        # KeyState -> its Keypair, for the tables the thread has
        self._owners: dict[KeyState, Keypair] = {}
        # notes taken with tables the thread no longer has, for the next drain
        self._pending: list[_Note] = []
        self._sockaddrs: dict[Endpoint, bytes | None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.wakeups = 0

    # --- tables -----------------------------------------------------------------------------

    def _keys(self, kp: Keypair, owners: dict[KeyState, Keypair]) -> KeyState:
        assert _c is not None
        ks = kp.shared
        if not isinstance(ks, _c.KeyState):
            last, blocks = kp.replay_state()
            ks = _c.KeyState(kp.send.key, kp.receive.key, kp.local_index, kp.remote_index,
                             kp.created, kp.send_counter, last, blocks)
            kp.share(ks)
        owners[ks] = kp
        return ks

    def _sockaddr(self, ep: Endpoint | None) -> bytes | None:
        if ep is None:
            return None
        try:
            return self._sockaddrs[ep]
        except KeyError:
            pass
        try:
            raw: bytes | None = raw_sockaddr(self.family, ep)
        except (OSError, ValueError):
            raw = None  # unusable here: its packets take the slow path, which counts them
        if len(self._sockaddrs) > _EP_CACHE_MAX:
            self._sockaddrs.clear()
        self._sockaddrs[ep] = raw
        return raw

    def sync(self, force: bool = False) -> None:
        """Push the port's tables to the thread when its generation moved."""
        fast = self.engine.fast
        gen = fast.generation
        if gen == self.generation and not force:
            return
        self.generation = gen
        tables = fast.datapath_tables()
        owners: dict[KeyState, Keypair] = {}
        slots: dict[object, int] = {}
        peers: list[tuple[bytes | None, KeyState | None, int, bytes | None]] = []
        for peer, ep, kp in tables.peers:
            slots[peer] = len(peers)
            peers.append((self._sockaddr(ep), self._keys(kp, owners) if kp else None,
                          peer.clamp_mtu, peer.public_key.raw))
        indices: list[tuple[int, KeyState, int, bool]] = []
        for kp, is_next in tables.receive:
            slot = slots.get(kp.peer)
            if slot is not None:
                indices.append((kp.local_index, self._keys(kp, owners), slot, is_next))
        routes = [(addr, plen, slots[p]) for addr, plen, p in tables.routes if p in slots]
        old = self.c.set_tables(peers, indices, routes)
        self._pending += self._resolve(old)
        self._owners = owners
        self.set_clock()

    def _resolve(self, notes: list[_CNote]) -> list[_Note]:
        owners = self._owners
        out: list[_Note] = []
        for ks, txp, txb, rxp, rxb, keep, src in notes:
            kp = owners.get(ks)
            if kp is not None:
                out.append((kp, txp, txb, rxp, rxb, keep, src))
        return out

    def set_clock(self) -> None:
        """Tell the thread the engine's time (a system clock: an offset to CLOCK_MONOTONIC,
        which is what time.monotonic reads on Linux)."""
        self.c.set_clock(self.engine.clock.monotonic() - time.monotonic())

    def merge_stats(self, st: EngineStats) -> None:
        """Add the thread's engine counters since the last call to `st`."""
        for name, n in self.c.take_stats().items():
            if name == "up_overflow":
                st.datapath_queue_full += n
            else:
                setattr(st, name, getattr(st, name) + n)

    def set_guard(self, guard: HandshakeGuard | None) -> None:
        self.c.set_guard(guard)

    def set_policy(self, pf: object | None) -> None:
        """The filter the thread judges decrypted packets by and tracks TUN reads with
        (None: no policy); a C PolicyFilter, which is what the engine has in C mode."""
        assert _c is not None
        self.c.set_policy(pf if isinstance(pf, _c.PolicyFilter) else None)

    # --- life -------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.sync(force=True)
        self.set_policy(self.engine.policy.filter)
        loop.add_reader(self.c.wake_fd, self.on_wake)
        self.c.start()

    def close(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.c.wake_fd)
            self._loop = None
        self.c.stop()
        try:
            self.drain(execute=False)  # the last notes and counters still count
        except Exception:
            self.engine._internal_error("datapath")
        self.c.set_guard(None)
        self.c.set_policy(None)
        self.c.set_tables([], [], [])

    # --- what the thread hands up ------------------------------------------------------------

    def _endpoint(self, raw: bytes) -> Endpoint:
        # the engine's own cache of raw addresses (its C reader fills the same one)
        return endpoint_cached(self.engine._ep_cache, raw)

    def on_wake(self) -> None:
        self.wakeups += 1
        try:
            self.drain()
        except Exception:
            self.engine._internal_error("datapath")
        finally:
            self.engine._arm()

    def drain(self, execute: bool = True) -> None:
        """Take what the thread handed up and carry it out (see the module docstring)."""
        eng = self.engine
        tun, grams, notes, counts, gone = self.c.drain()
        fast = eng.fast
        c = eng.clock
        now, wall = c.monotonic(), c.wall()
        actions: list[Action] = []
        resolved, self._pending = self._pending + self._resolve(notes), []
        for kp, txp, txb, rxp, rxb, keep, src in resolved:
            if txp:
                actions += fast.note_sent(now, kp.peer, txp, txb, wall=wall)
            if rxp:
                ep = self._endpoint(src) if src is not None else None
                actions += fast.note_received(now, kp, rxp, rxb, ep, n_keepalive=keep,
                                              wall=wall)
        st = eng.own_stats
        for name, n in counts.items():
            if name in _DROPS:
                fast.note_dropped(name, n)
            elif name == "up_overflow":
                st.datapath_queue_full += n
            else:
                setattr(st, name, getattr(st, name) + n)
        guard = fast.guard
        if _c is not None and isinstance(guard, _c.HandshakeGuard):
            verdicts = guard.take_counts()
            if any(verdicts):
                fast.count_verdicts(verdicts)
        if not execute:
            return
        if actions:
            eng.execute(actions)
        if tun:
            eng._tun_in(tun, eng.vnet)
        if grams:
            rx = eng._receive_batch()
            cguard = guard if _c is not None and isinstance(guard, _c.HandshakeGuard) else None
            for data, addr, admitted in grams:
                if admitted and cguard is not None:
                    cguard.set_ticket(data[-32:-16])
                rx.feed(memoryview(data), 0, self._endpoint(addr))
            rx.finish()
        if gone:
            eng._tun_gone(OSError(gone, os.strerror(gone)))
        self.sync()
