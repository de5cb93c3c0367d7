"""Replay defense: a bounded filter of the acks (and timeouts) already used within the horizon.

A stateless server answers identical packets identically, so a replayed request would make it send
again (paper section 2.2). Each ack of a loss-free piece may clock one request, whoever carries it:
a request consumes the acks it owns (its own packet; under recovery also the lost acks below it,
see :func:`trickles.congestion.plan_recovery`), and a retransmit timeout consumes the epoch it
opens. So a continuation cannot be used twice, nor once directly and again by a request that
claims it lost, nor once as a REQUEST and again as a REGEN, and one connection gets at most one
restart per epoch: the keys (see :func:`ack_key`, :func:`timeout_key`) name protocol events, not
the bytes of a datagram.

Continuations older than the horizon are refused by the freshness check, so a key need only be
remembered for one horizon (plus the clock skew allowed between replicas): two generations, rotated
every ``period``, give exactly that bound, and the purge is dropping the old generation.

Memory is bounded by ``capacity`` keys per generation. A full generation does not fail closed for
everyone: it rotates early, and from then on continuations issued before the oldest generation
still held are refused as stale (their earlier uses may have been forgotten). A flood thus shortens
the horizon for continuations held a long time; fresh traffic is served throughout.
Dropping the filter loses no connection: it only re-admits replays.
"""

from __future__ import annotations

from typing import Final

from trickles.errors import Replay, Stale

U32: Final = 0xFFFFFFFF  # Final: C statics in the compiled build, not dict lookups
_CLOSE_TAG: Final = -2
_TIMEOUT_TAG: Final = -1


def ack_key(conn_id: int, epoch: int, base: int, seq: int) -> int:
    """The key of ack ``seq`` of the piece ``(epoch, base)`` of a connection."""
    return hash((conn_id, epoch, base, seq))


def timeout_key(conn_id: int, new_epoch: int) -> int:
    """The key of the restart that opens ``new_epoch``: one per epoch, whichever continuation asks."""
    return hash((conn_id, new_epoch, _TIMEOUT_TAG))


def close_key(conn_id: int, epoch: int, base: int, seq: int) -> int:
    return hash((conn_id, epoch, base, seq, _CLOSE_TAG))


def _age(now_ms: int, then_ms: int) -> int:
    """Signed ``now - then`` on the 32-bit millisecond clock."""
    d = (now_ms - then_ms) & U32
    return d - (1 << 32) if d & 0x80000000 else d


class ReplayFilter:
    __slots__ = (
        "_cur",
        "_floor",
        "_prev",
        "_prev_start",
        "_start",
        "capacity",
        "early_rotations",
        "period_ms",
        "replays",
        "stale_after_flood",
    )

    def __init__(self, period_ms: int, capacity: int) -> None:
        self.period_ms = period_ms
        self.capacity = capacity
        self._cur: set[int] = set()
        self._prev: set[int] = set()
        self._start: int | None = None
        self._prev_start: int | None = None
        self._floor: int | None = None  # continuations issued before this are refused (after a flood)
        self.replays = 0
        self.early_rotations = 0
        self.stale_after_flood = 0

    def __len__(self) -> int:
        return len(self._cur) + len(self._prev)

    def clear(self) -> None:
        self._cur.clear()
        self._prev.clear()

    def _rotate(self, now_ms: int) -> None:
        self._prev, self._cur = self._cur, set()
        self._prev_start, self._start = self._start, now_ms

    def check(self, keys: list[int], issued_ms: int, now_ms: int) -> None:
        """Raise :class:`Replay` if any key was used; :class:`Stale` if the continuation (issued at
        ``issued_ms``) predates what the filter still remembers. :meth:`add` the keys once the
        request verified, so a forged request that copies a genuine continuation cannot burn it."""
        start = self._start
        if start is None:
            self._start = now_ms
        elif _age(now_ms, start) >= self.period_ms:
            self._rotate(now_ms)
        floor = self._floor
        if floor is not None:
            if _age(now_ms, floor) > 2 * self.period_ms:
                self._floor = None  # long past the horizon: the freshness check covers it
            elif _age(issued_ms, floor) < 0:
                self.stale_after_flood += 1
                raise Stale("continuation older than the replay filter's memory (after a flood)")
        cur, prev = self._cur, self._prev
        for k in keys:
            if k in cur or k in prev:
                self.replays += 1
                raise Replay("continuation already used")

    def add(self, keys: list[int], now_ms: int) -> None:
        if len(self._cur) + len(keys) > self.capacity:
            # Full: forget the oldest generation rather than refuse everyone; what it remembered
            # may now be replayed only with continuations issued before the kept generation began,
            # and those are refused from now on.
            self._rotate(now_ms)
            self._floor = self._prev_start
            self.early_rotations += 1
        self._cur.update(keys)
