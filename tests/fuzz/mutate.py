"""A small seeded mutation fuzzer: byte-level mutations plus the run budget and memory check.

``TRICKLES_FUZZ_N`` sets how many inputs each target runs (``make fuzz`` sets 100,000); it changes
the count only: every assertion runs in both modes.
"""

from __future__ import annotations

import os
import random
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass

INTERESTING: dict[int, tuple[int, ...]] = {
    1: (0, 1, 2, 0x7F, 0x80, 0xFE, 0xFF),
    2: (0, 1, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF),
    4: (0, 1, 1 << 24, 0x7FFFFFFF, 0x80000000, 0xFFFF0000, 0xFFFF0001, 0xFFFFFFFF),
    8: (0, 1, 1 << 40, 1 << 63, (1 << 64) - 1, 0xFFFFFF << 40, (1 << 64) - (1 << 40)),
}


def fuzz_count(default: int) -> int:
    """Inputs per target: ``TRICKLES_FUZZ_N`` if set, else the fast mode's ``default``."""
    return int(os.environ.get("TRICKLES_FUZZ_N", default))


class Mutator:
    """Seeded byte mutations (bit flips, interesting integers, small deltas, inserts, deletes,
    duplications, truncation, splicing) applied only at positions in ``[lo, hi)``."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def mutate(self, data: bytes, lo: int = 0, hi: int | None = None, corpus: Sequence[bytes] = ()) -> bytes:
        buf = bytearray(data)
        for _ in range(self.rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
            end = len(buf) if hi is None else min(hi, len(buf))
            self._once(buf, lo, end, corpus)
        return bytes(buf)

    def _once(self, buf: bytearray, lo: int, hi: int, corpus: Sequence[bytes]) -> None:
        rng = self.rng
        op = rng.randrange(9)
        pos = rng.randrange(lo, hi) if hi > lo else lo
        if op == 0 and hi > lo:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and hi > lo:
            buf[pos] = rng.randrange(256)
        elif op == 2:
            width = rng.choice((1, 2, 4, 8))
            if pos + width <= hi:
                buf[pos : pos + width] = rng.choice(INTERESTING[width]).to_bytes(width, "big")
        elif op == 3 and hi > lo:
            buf[pos] = (buf[pos] + rng.randrange(-4, 5)) & 0xFF
        elif op == 4 and hi is not None and hi >= len(buf):  # structure-changing ops: only at the tail
            buf[pos:pos] = rng.randbytes(rng.choice((1, 2, 4, 8, 16, 100)))
        elif op == 5 and hi >= len(buf) and hi > lo:
            del buf[pos : pos + rng.choice((1, 2, 4, 8, 64))]
        elif op == 6 and hi >= len(buf) and hi > lo:
            n = rng.randrange(1, 64)
            buf[pos:pos] = buf[pos : pos + n]
        elif op == 7 and hi >= len(buf):
            del buf[pos:]
        elif op == 8 and corpus and hi >= len(buf):
            other = rng.choice(corpus)
            buf[pos:] = other[rng.randrange(len(other) + 1) :]


@dataclass
class RunStats:
    inputs: int = 0
    seconds: float = 0.0
    peak_growth: int = 0  # bytes: tracemalloc peak during the measured part over its start

    def line(self, name: str) -> str:
        rate = self.inputs / self.seconds if self.seconds else 0.0
        return (
            f"{name}: {self.inputs} inputs in {self.seconds:.1f} s ({rate:.0f}/s), "
            f"traced peak growth {self.peak_growth / 1e6:.2f} MB"
        )


def run_flat(n: int, one: Callable[[int], None], *, warmup: float = 0.2) -> RunStats:
    """Run ``one(i)`` for ``i < n`` under tracemalloc; the peak is measured after the first
    ``warmup`` part (bounded caches fill up there), against the traced size at that point."""
    st = RunStats(n)
    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        start = int(n * warmup)
        for i in range(start):
            one(i)
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(start, n):
            one(i)
        st.peak_growth = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    st.seconds = time.perf_counter() - t0
    return st
