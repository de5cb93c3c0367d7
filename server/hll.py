"""Distinct active clients, counted in fixed memory: a HyperLogLog and a windowed pair of them.

A HyperLogLog (Flajolet et al., 2007) keeps ``m = 2**p`` one-byte registers. Each item is hashed to
64 bits; the first ``p`` bits pick a register, which keeps the largest "rank" (position of the first
1 bit in the rest) seen. The registers' distribution estimates the number of distinct items with a
relative standard error of about ``1.04 / sqrt(m)`` (1.6 % for the default p = 12, 4 KiB), whatever
the number of clients: the memory never grows. Small counts are nearly exact.

The hash is keyed BLAKE2b with a per-process random key, so a client cannot choose addresses that
land in chosen registers with high ranks and inflate the estimate.

:class:`ActiveClients` answers "how many distinct clients in the last minute" with two sketches:
the current one and the previous one, rotated every ``window_s`` seconds (30 s); the estimate is
that of their union, i.e. the clients seen within the last 30 to 60 seconds.
"""

from __future__ import annotations

import hashlib
import math
import secrets

U64 = (1 << 64) - 1


class HyperLogLog:
    __slots__ = ("_key", "p", "registers")

    def __init__(self, p: int = 12, key: bytes | None = None) -> None:
        if not 4 <= p <= 16:
            raise ValueError("p must be in 4..16")
        self.p = p
        self.registers = bytearray(1 << p)
        self._key = key if key is not None else secrets.token_bytes(16)

    def add(self, item: bytes) -> None:
        h = int.from_bytes(hashlib.blake2b(item, digest_size=8, key=self._key).digest(), "big")
        p = self.p
        idx = h >> (64 - p)
        rest = (h << p) & U64
        rank = 65 - rest.bit_length() if rest else 65 - p  # position of the first 1 bit of the rest
        regs = self.registers
        if regs[idx] < rank:
            regs[idx] = rank

    def merge(self, other: HyperLogLog) -> HyperLogLog:
        """The sketch of the union (both must share ``p`` and key)."""
        if other.p != self.p or other._key != self._key:
            raise ValueError("sketches differ in size or key")
        out = HyperLogLog(self.p, self._key)
        out.registers = bytearray(map(max, self.registers, other.registers))
        return out

    def clear(self) -> None:
        self.registers = bytearray(len(self.registers))

    def estimate(self) -> float:
        """Ertl's improved estimator ("New cardinality estimation algorithms for HyperLogLog
        sketches", 2017): unbiased from 0 to far beyond our scales, with no empirical tables."""
        regs = self.registers
        m = len(regs)
        q = 64 - self.p
        counts = [0] * (q + 2)
        for r in regs:
            counts[r] += 1
        z = m * _tau(1 - counts[q + 1] / m)
        for k in range(q, 0, -1):
            z = 0.5 * (z + counts[k])
        z += m * _sigma(counts[0] / m)
        return m * m / (2 * math.log(2) * z) if math.isfinite(z) else 0.0


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        z_old = z
        z += x * y
        y += y
        if z == z_old:
            return z


def _tau(x: float) -> float:
    if x in (0.0, 1.0):
        return 0.0
    y, z = 1.0, 1 - x
    while True:
        x = math.sqrt(x)
        z_old = z
        y *= 0.5
        z -= (1 - x) ** 2 * y
        if z == z_old:
            return z / 3


class ActiveClients:
    """Distinct client addresses seen within the last ``window_s`` to ``2 * window_s`` seconds.

    :meth:`add` is called on the first sight of an address after each rotation; the caller (the UDP
    loop) ensures that by clearing its address cache whenever :meth:`rotate_due` rotates.
    """

    __slots__ = ("_cur", "_next", "_prev", "window_s")

    def __init__(self, window_s: float = 30.0, p: int = 12) -> None:
        key = secrets.token_bytes(16)
        self.window_s = window_s
        self._cur = HyperLogLog(p, key)
        self._prev = HyperLogLog(p, key)
        self._next: float | None = None

    def add(self, addr: bytes) -> None:
        self._cur.add(addr)

    def rotate_due(self, now: float) -> bool:
        """Rotate if the window has passed at ``now`` (any monotonic clock); True if it did."""
        if self._next is None:
            self._next = now + self.window_s
            return False
        if now < self._next:
            return False
        self._prev, self._cur = self._cur, self._prev
        self._cur.clear()
        self._next = now + self.window_s
        return True

    def estimate(self) -> float:
        return self._cur.merge(self._prev).estimate()
