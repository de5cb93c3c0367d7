"""Replay defense: a bounded filter of continuation MACs seen within the freshness horizon.

A stateless server answers identical packets identically, so a replayed request would make it send
again (paper section 2.2). Each continuation may clock one request (plus one per timeout attempt, see
below); the filter remembers the MACs it has seen. Continuations older than the horizon are refused
by the freshness check, so a MAC need only be remembered for one horizon (plus the clock skew we
allow between replicas): two generations, rotated every ``period``, give exactly that bound, and the
purge is just dropping the old generation. Memory is bounded by ``capacity`` entries per generation;
past that the filter fails closed (the request is dropped and counted) rather than admit replays.

The key is the first 64 bits of the MAC mixed with the request type and timeout attempt, so a
client's repeated timeout requests (attempt 0, 1, 2...) on the same continuation are distinct while
an identical datagram is not. Dropping the filter loses no connection: it only re-admits replays.
"""

from __future__ import annotations

from trickles.errors import Replay

U32 = 0xFFFFFFFF


class ReplayFilter:
    __slots__ = ("_cur", "_prev", "_start", "capacity", "full_drops", "period_ms", "replays")

    def __init__(self, period_ms: int, capacity: int) -> None:
        self.period_ms = period_ms
        self.capacity = capacity
        self._cur: set[int] = set()
        self._prev: set[int] = set()
        self._start: int | None = None
        self.replays = 0
        self.full_drops = 0

    def __len__(self) -> int:
        return len(self._cur) + len(self._prev)

    def clear(self) -> None:
        self._cur.clear()
        self._prev.clear()

    def check_and_add(self, mac: bytes, rtype: int, attempt: int, now_ms: int) -> None:
        """Raise :class:`Replay` if this (MAC, type, attempt) was seen; else remember it."""
        self.add(self.check(mac, rtype, attempt, now_ms))

    def check(self, mac: bytes, rtype: int, attempt: int, now_ms: int) -> int:
        """Raise :class:`Replay` if seen; return the key to :meth:`add` once the request is verified.

        Adding only after every other check passed means a forged request (bad proof) that copies a
        genuine continuation cannot burn it.
        """
        if self._start is None:
            self._start = now_ms
        elif ((now_ms - self._start) & U32) >= self.period_ms:
            self._prev = self._cur
            self._cur = set()
            self._start = now_ms
        key = int.from_bytes(mac[:8], "big") ^ (rtype << 56) ^ (attempt << 48)
        if key in self._cur or key in self._prev:
            self.replays += 1
            raise Replay("continuation already used")
        if len(self._cur) >= self.capacity:
            self.full_drops += 1
            raise Replay("replay filter full")
        return key

    def add(self, key: int) -> None:
        self._cur.add(key)
