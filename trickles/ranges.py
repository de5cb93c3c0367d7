"""A small mutable set of half-open integer ranges, kept sorted and merged."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator


class RangeSet:
    """Sorted, disjoint, non-adjacent ``[start, end)`` ranges with O(log n + k) updates."""

    __slots__ = ("_ends", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends, strict=True)

    def __len__(self) -> int:
        return len(self._starts)

    def total(self) -> int:
        return sum(e - s for s, e in self)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect_left(self._ends, start)  # first range ending at/after start (adjacent merges)
        j = bisect_right(self._starts, end)  # ranges starting at/before end overlap or touch
        if i < j:
            start = min(start, self._starts[i])
            end = max(end, self._ends[j - 1])
        self._starts[i:j] = [start]
        self._ends[i:j] = [end]

    def remove(self, start: int, end: int) -> None:
        if end <= start:
            return
        i = bisect_right(self._ends, start)
        j = bisect_left(self._starts, end)
        if i >= j:
            return
        new_s: list[int] = []
        new_e: list[int] = []
        if self._starts[i] < start:
            new_s.append(self._starts[i])
            new_e.append(start)
        if self._ends[j - 1] > end:
            new_s.append(end)
            new_e.append(self._ends[j - 1])
        self._starts[i:j] = new_s
        self._ends[i:j] = new_e

    def contains(self, start: int, end: int) -> bool:
        """True if all of ``[start, end)`` is in the set."""
        i = bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of ``[start, end)`` not in the set."""
        out: list[tuple[int, int]] = []
        pos = start
        i = max(bisect_right(self._starts, start) - 1, 0)
        while i < len(self._starts) and self._starts[i] < end:
            s, e = self._starts[i], self._ends[i]
            if e > pos:
                if s > pos:
                    out.append((pos, s))
                pos = e
            i += 1
        if pos < end:
            out.append((pos, end))
        return out

    def take_first(self, max_len: int, limit: int) -> tuple[int, int] | None:
        """Remove and return the first up to ``max_len`` integers of the set, all below ``limit``
        (None if the set has none below it): ``[a, b)``, taken from the front of the first range."""
        starts = self._starts
        if not starts or starts[0] >= limit:
            return None
        a = starts[0]
        end = self._ends[0]
        b = a + max_len
        if limit < b:
            b = limit
        if end <= b:
            del starts[0]
            del self._ends[0]
            return a, end
        starts[0] = b
        return a, b

    def first(self) -> tuple[int, int] | None:
        return (self._starts[0], self._ends[0]) if self._starts else None
