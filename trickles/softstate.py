"""The soft-state continuation cache (paper section 5.1): an optimisation the server may lose.

It maps the sealed bytes of every continuation this server sealed to its parsed fields, the client
address it is bound to and its piece id (:func:`trickles.nonces.piece_id` of its fields), up to
``size`` entries, evicted oldest first. A request whose continuation is found (from the same
address) skips the MAC check, the parse and the piece id's hash; a miss, or dropping the whole
cache, costs only time (``PROTOCOL.md`` section 8.2). A lookup removes the entry: a continuation is
good for one request.
"""

from __future__ import annotations

from collections import OrderedDict

from trickles.continuation import Continuation


class ContinuationCache:
    """LRU map sealed continuation -> (fields, client address, piece id); ``size`` 0 turns it off."""

    __slots__ = ("_entries", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, tuple[Continuation, bytes, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, sealed: bytes) -> tuple[Continuation, bytes, bytes] | None:
        """Remove and return the entry for ``sealed`` (None on a miss or when the cache is off)."""
        return self._entries.pop(sealed, None) if self.size else None

    def put(self, sealed: bytes, cont: Continuation, addr: bytes, piece: bytes) -> None:
        """Remember a continuation just sealed for ``addr`` (``piece``: its piece id); evict the
        oldest beyond ``size``."""
        entries = self._entries
        entries[sealed] = (cont, addr, piece)
        if len(entries) > self.size:
            entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


__all__ = ["ContinuationCache"]
