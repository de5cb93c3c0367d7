"""A least-recently-used cache bounded by the bytes of its values, with counters for metrics."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """Entries are evicted oldest-first once their total ``size`` exceeds ``capacity`` bytes.

    Droppable at any moment (``clear``): everything in it can be recomputed. Thread-safe, since the
    TCP fallback reads from worker threads.
    """

    def __init__(self, capacity: int, size: Callable[[V], int]) -> None:
        self.capacity = capacity
        self._size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Hashable, value: V) -> None:
        n = self._size(value)
        if n > self.capacity:
            return  # never worth evicting everything else for
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= self._size(old)
            self._entries[key] = value
            self.bytes += n
            while self.bytes > self.capacity:
                _, gone = self._entries.popitem(last=False)
                self.bytes -= self._size(gone)
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0
