"""The fuzzing engine (testing/fuzz.py has the targets): a deterministic mutator, the
`Target` a fuzz run drives, and the runner that counts what each target raised."""

from __future__ import annotations

import contextlib
import logging
import random
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

WALL0 = 1_700_000_000.0
MAX_DATAGRAM = 1400


# -- mutation ----------------------------------------------------------------------------------

_INTERESTING: tuple[tuple[int, tuple[int, ...]], ...] = (
    (1, (0, 1, 2, 3, 4, 5, 6, 0x1F, 0x20, 0x31, 0x33, 0x34, 0x3F, 0x40, 0x41, 0x42, 0x4D,
         0x7F, 0x80, 0xC0, 0xFE, 0xFF)),
    (2, (0, 1, 19, 63, 64, 185, 186, 187, 313, 314, 315, 512, 1200, 1280, 0x7FFF, 0x8000,
         0xFFFF)),
    (4, (0, 1, 4, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)),
    (8, (0, 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1)),
)


class Mutator:
    """Derives inputs from seeds; `mutate` is a pure function of the random state."""

    def __init__(self, rng: random.Random, seeds: Sequence[bytes], max_len: int = MAX_DATAGRAM
                 ) -> None:
        if not seeds:
            raise ValueError("a mutator needs at least one seed")
        self.rng = rng
        self.seeds = list(seeds)
        self.max_len = max_len

    def mutate(self) -> bytes:
        r = self.rng
        if r.random() < 0.02:
            return r.randbytes(r.randrange(min(self.max_len, 64) + 1))
        buf = bytearray(r.choice(self.seeds))
        for _ in range(r.choice((1, 1, 1, 1, 2, 2, 3, 4, 8))):
            self._one(buf)
        return bytes(buf[: self.max_len])

    def _one(self, buf: bytearray) -> None:
        r = self.rng
        op = r.randrange(13)
        n = len(buf)
        if n == 0 and op < 9:
            op = 9
        if op == 0:  # flip one bit
            i = r.randrange(n)
            buf[i] ^= 1 << r.randrange(8)
        elif op == 1:  # random byte
            buf[r.randrange(n)] = r.randrange(256)
        elif op == 2:  # +/- 1 (count and length fields)
            i = r.randrange(n)
            buf[i] = (buf[i] + r.choice((1, -1))) & 0xFF
        elif op in (3, 4):  # an interesting integer, little- or big-endian
            width, values = r.choice(_INTERESTING)
            if n >= width:
                i = r.randrange(n - width + 1)
                value = r.choice(values)
                buf[i : i + width] = (value.to_bytes(width, "little") if op == 3
                                      else value.to_bytes(width, "big"))
        elif op == 5:  # truncate anywhere
            del buf[r.randrange(n) :]
        elif op == 6:  # drop a few bytes at the end
            del buf[max(0, n - r.randrange(1, 17)) :]
        elif op == 7:  # delete a chunk
            i = r.randrange(n)
            del buf[i : i + r.randrange(1, 33)]
        elif op == 8:  # duplicate a chunk
            i = r.randrange(n)
            chunk = buf[i : i + r.randrange(1, 65)]
            buf[i:i] = chunk
        elif op == 9:  # extend
            tail = r.randbytes(r.randrange(1, 65)) if r.random() < 0.5 else bytes(
                r.randrange(1, 65))
            buf += tail
        elif op == 10:  # insert random bytes
            i = r.randrange(n + 1)
            buf[i:i] = r.randbytes(r.randrange(1, 17))
        elif op == 11:  # splice: our prefix, another seed's suffix
            other = r.choice(self.seeds)
            cut = r.randrange(n + 1)
            cut2 = r.randrange(len(other) + 1)
            buf[cut:] = other[cut2:]
        else:  # overwrite a chunk with the same place of another seed
            other = r.choice(self.seeds)
            if other:
                i = r.randrange(len(other))
                j = i + r.randrange(1, 65)
                buf[i:j] = other[i:j]


# -- targets -----------------------------------------------------------------------------------


class RoundTripError(AssertionError):
    """A decoded message did not encode back to the bytes it was decoded from."""


@dataclass
class Target:
    name: str
    seeds: list[bytes]
    run: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...] = ()
    fixup: Callable[[bytes], bytes] | None = None  # re-authenticate a mutated input
    max_len: int = MAX_DATAGRAM
    reset: Callable[[], None] | None = None  # fresh state (stateful targets)
    reset_every: int = 0


@dataclass
class Failure:
    target: str
    data: bytes
    error: str  # exception type and message
    where: str  # the innermost frame: file:line

    @property
    def signature(self) -> tuple[str, str]:
        return (self.error.split(":", 1)[0], self.where)


@dataclass
class FuzzStats:
    target: str
    inputs: int = 0
    accepted: int = 0  # ran without raising
    rejected: int = 0  # raised the documented error
    exceptions: int = 0  # raised anything else (a bug)
    log_records: int = 0  # log lines emitted while handling the inputs
    failures: list[Failure] = field(default_factory=list)  # first one per signature

    def unique(self) -> int:
        return len(self.failures)


building_seeds = [0]  # > 0 while a seed mesh is built: its log lines are not the target's


class _LogCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if not building_seeds[0]:
            self.count += 1


def _failure(target: str, data: bytes, exc: BaseException) -> Failure:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else "?"
    return Failure(target, data, f"{type(exc).__name__}: {exc}", where)


def check_one(target: Target, data: bytes, stats: FuzzStats) -> Failure | None:
    """Run one (already fixed-up) input and account for it in `stats`."""
    stats.inputs += 1
    try:
        target.run(data)
    except target.allowed:
        stats.rejected += 1
        return None
    except Exception as exc:
        stats.exceptions += 1
        f = _failure(target.name, data, exc)
        if f.signature not in {x.signature for x in stats.failures}:
            stats.failures.append(f)
        return f
    stats.accepted += 1
    return None


def prepare(target: Target, data: bytes) -> bytes:
    """The input as the target sees it (after re-authentication)."""
    if target.fixup is None:
        return data
    try:
        return target.fixup(data)
    except Exception:  # a fix-up that cannot apply leaves the input as it is
        return data


@contextlib.contextmanager
def counted_logs() -> Iterator[_LogCounter]:
    """Count (and swallow) every meshguard log record while the block runs."""
    counter = _LogCounter()
    root = logging.getLogger("meshguard")
    old_level, old_propagate = root.level, root.propagate
    root.addHandler(counter)
    root.setLevel(logging.DEBUG)
    root.propagate = False
    try:
        yield counter
    finally:
        root.removeHandler(counter)
        root.setLevel(old_level)
        root.propagate = old_propagate


def fuzz(target: Target, n: int, seed: int = 0) -> FuzzStats:
    """`n` mutated inputs (after the seeds themselves) against `target`."""
    stats = FuzzStats(target.name)
    with counted_logs() as counter:
        for s in target.seeds:
            check_one(target, s, stats)
        mut = Mutator(random.Random(seed), target.seeds, target.max_len)
        for i in range(n):
            if target.reset is not None and target.reset_every and i and \
                    i % target.reset_every == 0:
                target.reset()
            check_one(target, prepare(target, mut.mutate()), stats)
    stats.log_records = counter.count
    return stats


def dedupe(items: Iterable[bytes]) -> list[bytes]:
    return list(dict.fromkeys(items))
