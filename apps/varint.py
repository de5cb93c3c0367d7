"""Compact encodings shared by the apps' continuation blobs: LEB128 varints and length-prefixed bytes.

The blobs come back from clients (MAC-protected, but decoded defensively anyway), so the reader is
bounds-checked everywhere and reports failures through the caller's own exception type.
"""

from __future__ import annotations

from collections.abc import Callable


def put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def put_bytes(out: bytearray, value: bytes) -> None:
    put_varint(out, len(value))
    out += value


class VarintReader:
    """A cursor over a blob; every failure raises ``error(message)``."""

    def __init__(self, blob: bytes, error: Callable[[str], Exception], max_bits: int = 63) -> None:
        self.blob = blob
        self.pos = 0
        self._error = error
        self._max_shift = max_bits

    def byte(self) -> int:
        if self.pos >= len(self.blob):
            raise self._error("truncated")
        self.pos += 1
        return self.blob[self.pos - 1]

    def varint(self, limit: int) -> int:
        value = shift = 0
        while True:
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > self._max_shift:
                raise self._error("oversized number")
        if value > limit:
            raise self._error("number out of range")
        return value

    def bytes(self, limit: int) -> bytes:
        size = self.varint(limit)
        if self.pos + size > len(self.blob):
            raise self._error("truncated")
        self.pos += size
        return self.blob[self.pos - size : self.pos]
