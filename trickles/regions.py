"""The client's user data: regions of the sparse output space and their reassembly.

A *region* is one response (paper section 6.1): its own ``1 << REGION_SHIFT`` bytes of the output
space, the output continuation the app sent for it, the bytes received and wanted, and the in-order
bytes ready to read. Its input side is the request to send with its input continuation. Bytes are
identified by offset, so duplicates, retransmissions and late packets are all harmless.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trickles import wire
from trickles.ranges import RangeSet
from trickles.wire import REGION_SHIFT, UcontKind


class Assign:
    """What one response slot was asked to carry: a byte range, or the answer to an input.

    A slotted class, built per slot of every request: a NamedTuple's ``__new__`` is interpreted
    Python even in the compiled build."""

    __slots__ = ("length", "region", "start")

    def __init__(self, region: int, start: int, length: int) -> None:
        self.region = region
        self.start = start
        self.length = length  # 0 for an input slot


@dataclass
class Region:
    """One response: where it lives in the output space and how much of it has arrived."""

    rid: int
    start: int  # region's first byte in the output space
    end: int | None = None  # one past the last byte, once known
    ucont: bytes = b""  # output continuation (empty until the app sent it)
    have: RangeSet = field(default_factory=RangeSet)  # bytes received beyond next_off
    want: RangeSet = field(default_factory=RangeSet)
    pieces: dict[int, bytes] = field(default_factory=dict)
    next_off: int = 0  # reassembly point (absolute)
    ready: bytearray = field(default_factory=bytearray)
    error: tuple[int, str] | None = None
    # input side
    input: bytearray = field(default_factory=bytearray)
    input_fin: bool = False
    input_acked: int = 0  # bytes of input the server consumed
    input_ucont: bytes = b""
    input_inflight: bool = False
    input_done: bool = False
    consumed: int = 0  # bytes of input the app used for this region's request (stream mode)

    def __post_init__(self) -> None:
        self.next_off = self.start

    @property
    def complete(self) -> bool:
        return self.end is not None and self.next_off >= self.end

    def store(self, offset: int, data: bytes) -> None:
        """Bytes at ``offset`` arrived: append them if in order, else keep them for reassembly."""
        end = offset + len(data)
        if self.end is not None and end > self.end:
            end = self.end
        nxt = self.next_off
        if end <= nxt:
            return  # a duplicate
        want = self.want
        if offset <= nxt and not self.have:
            # The common case: in order. No range bookkeeping beyond moving the reassembly point.
            self.ready += (
                data[nxt - offset : end - offset] if (offset < nxt or end - offset < len(data)) else data
            )
            self.next_off = end
            if want:
                first = want.first()
                if first is not None and first[0] < end:
                    want.remove(nxt, end)
            return
        for a, b in self.have.missing(max(offset, nxt), end):
            self.pieces[a] = data[a - offset : b - offset]
            self.have.add(a, b)
            want.remove(a, b)
        self.drain()

    def drain(self) -> None:
        """Move the pieces that now continue the in-order bytes to ``ready``."""
        pieces = self.pieces
        start = self.next_off
        while self.next_off in pieces:
            p = pieces.pop(self.next_off)
            self.ready += p
            self.next_off += len(p)
        if self.next_off != start:
            self.have.remove(start, self.next_off)

    def missing(self, start: int, end: int) -> list[tuple[int, int]]:
        """Bytes of [start, end) not received yet."""
        start = max(start, self.next_off)
        if start >= end:
            return []
        if not self.have:
            return [(start, end)]
        return self.have.missing(start, end)

    def skip(self, offset: int) -> None:
        """SKIP (paper section 5.2): the object ends at ``offset``; stop wanting the rest."""
        if offset >= self.start and (self.end is None or offset < self.end):
            self.end = offset
            self.want.remove(offset, self.start + (1 << REGION_SHIFT))
            self.drain()

    def fail(self, code: int, message: str) -> None:
        """The server's error for this region: stop asking for anything (the first error stays)."""
        if self.error is None:
            self.error = (code, message)
            self.want = RangeSet()
            self.input_done = True

    def on_ucont(self, ch: wire.Chunk) -> None:
        """A user continuation: progress of the input (INPUT_MORE), or the region's output one."""
        self.input_inflight = False
        if ch.kind == UcontKind.INPUT_MORE:
            if ch.consumed > self.input_acked:
                self.input_acked = min(ch.consumed, len(self.input))
            self.input_ucont = bytes(ch.data)
            return
        if self.ucont:
            return  # already have an output continuation for this region
        if not (self.start <= ch.valid_start <= ch.valid_end <= self.start + (1 << REGION_SHIFT)):
            return
        self.input_done = True
        self.consumed = ch.consumed
        self.ucont = bytes(ch.data)
        self.end = ch.valid_end
        if self.next_off < ch.valid_start:
            self.next_off = ch.valid_start
        for a, b in self.missing(ch.valid_start, ch.valid_end):
            self.want.add(a, b)


__all__ = ["Assign", "Region"]
