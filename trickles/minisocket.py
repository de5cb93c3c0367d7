"""The minisocket API the server apps see (paper section 3.2): one pending event, its slots, and
the ``App`` protocol that fills them.

A :class:`Minisocket` is a transient TCB for one event. The engine creates it (``receive``), the app
fills its slots (``handle``), the engine seals and encodes them (``send``). The verification context
the engine needs to answer the event rides along as a :class:`PendingEvent`; apps never touch it.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final, NamedTuple, Protocol

from trickles import wire
from trickles.congestion import Plan
from trickles.continuation import Continuation
from trickles.keys import ServerKey
from trickles.wire import FetchSeg, InputSeg


class EventKind(IntEnum):
    OPEN = 1
    REQUEST = 2
    CLOSE = 3


class PendingEvent(NamedTuple):
    """What a pending event needs to be answered (and to be extracted and moved elsewhere).

    Engine-private: verified fields, the plan, the key that seals the children and their nonces.
    """

    req: wire.Request
    data: bytes
    addr: bytes
    now: float
    cont: Continuation
    plan: Plan | None
    ckey: ServerKey
    nonces: list[int]
    now_ms: int
    rtt: int
    piece: bytes
    """The children's piece id (their nonces' PRF prefix), remembered with them in the soft-state
    cache; empty for events whose continuations are not cached (OPEN, CLOSE)."""


# Final: read from C statics per data chunk in the compiled build, not looked up in a dict.
_DATA_HEAD: Final = wire.CHUNK_DATA.size
_data_pack: Final = wire.CHUNK_DATA.pack
_C_DATA: Final = wire.C_DATA


class Minisocket:
    """A transient TCB for one event: read its input, fill at most ``n_slots`` packets, then gone.

    Input segment ``i`` is answered in slot ``i``; fetch range ``j`` (counting across fetch
    segments) is answered in slot ``len(inputs) + j``. Each slot holds ``capacity(i)`` chunk bytes.
    """

    __slots__ = ("_ctx", "_free", "chunks", "conn_id", "fetches", "inputs", "kind", "now", "plan")

    def __init__(
        self,
        kind: EventKind,
        conn_id: int,
        inputs: list[InputSeg],
        fetches: list[FetchSeg],
        caps: list[int],
        now: float,
        plan: Plan | None,
    ) -> None:
        self.kind = kind
        self.conn_id = conn_id
        self.inputs = inputs
        self.fetches = fetches
        self._free = caps
        self.chunks: list[list[bytes]] = [[] for _ in caps]
        self.now = now
        self.plan = plan
        self._ctx: PendingEvent | None = None

    @property
    def peer(self) -> bytes:
        """The client's address bytes (packed IP, 2-byte port) the continuations are MAC-bound to.

        Authenticated for requests (a continuation verifies only from the address it was sealed
        for), claimed for an OPEN; empty once the event is spent.
        """
        ctx = self._ctx
        return ctx.addr if ctx is not None else b""

    @property
    def n_slots(self) -> int:
        return len(self._free)

    def capacity(self, slot: int) -> int:
        """Chunk bytes still free in ``slot``."""
        return self._free[slot]

    def _put(self, slot: int, chunk: bytes) -> bool:
        free = self._free
        if slot >= len(free) or len(chunk) > free[slot]:
            return False
        self.chunks[slot].append(chunk)
        free[slot] -= len(chunk)
        return True

    def send_data(self, slot: int, offset: int, data: bytes) -> bool:
        """``msk_send`` for one slot: bytes at ``offset`` of the output space. False if it does not fit."""
        free = self._free
        n = len(data) + _DATA_HEAD
        if slot >= len(free) or n > free[slot]:
            return False
        # Header and data as two pieces: the engine joins a slot's pieces into the datagram anyway,
        # so concatenating them here would copy the data once more.
        chunk = self.chunks[slot]
        chunk.append(_data_pack(_C_DATA, offset, len(data)))
        chunk.append(data)
        free[slot] -= n
        return True

    def send_skip(self, slot: int, offset: int, length: int) -> bool:
        """SKIP (paper section 5.2): the object ends at ``offset``; ``[offset, offset+length)`` of its
        region will never be sent, so the client stops asking for it."""
        return self._put(slot, wire.skip_chunk(offset, length))

    def set_ucont(
        self, slot: int, kind: int, region: int, consumed: int, valid_start: int, valid_end: int, blob: bytes
    ) -> bool:
        """``msk_setucont``: attach a user continuation to the packet of ``slot``."""
        return self._put(slot, wire.ucont_chunk(kind, region, consumed, valid_start, valid_end, blob))

    def send_error(self, slot: int, region: int, code: int, message: bytes) -> bool:
        return self._put(slot, wire.error_chunk(region, code, message[:200]))

    def fetch_slots(self) -> list[tuple[int, FetchSeg, int, int]]:
        """(slot, segment, start, length) for every requested range, in slot order."""
        out: list[tuple[int, FetchSeg, int, int]] = []
        slot = len(self.inputs)
        n = len(self._free)
        for seg in self.fetches:
            for start, length in seg.ranges:
                if slot >= n:
                    return out
                out.append((slot, seg, start, length))
                slot += 1
        return out


class App(Protocol):
    """A continuation-based server application (stateless per connection)."""

    def handle(self, msk: Minisocket) -> None: ...


__all__ = ["App", "EventKind", "Minisocket", "PendingEvent"]
