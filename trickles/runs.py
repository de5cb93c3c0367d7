"""Equal-size runs of datagrams for UDP segmentation offload: the pure planning half of
:mod:`trickles.server.gso`, which makes the system calls.

A GSO send needs segments of one size (the last may be shorter). Trickles packets of one connection
differ by a few bytes (a child with a delta continuation is 24 bytes longer than one without), so
:func:`plan_runs` pads the shorter DATA and RETRANSMIT packets of a run with the wire format's PAD
(:data:`trickles.wire.PAD_LIMIT` bytes at most) to the run's largest. A SYN-ACK is never padded, so
it never grows past its SYN. Compiled with the core: it runs once per datagram sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from trickles.wire import PAD_LIMIT, R_DATA, R_RETRANSMIT

MAX_SEGMENTS: Final = 64
"""The kernel's limit on segments per GSO send (UDP_MAX_SEGMENTS)."""
MAX_BYTES: Final = 65000
"""Payload bytes per GSO send: an IPv4 datagram's 65,535 less headers, with room to spare."""
_ZEROS: Final = [bytes(k) for k in range(PAD_LIMIT + 1)]


def _paddable(d: bytes) -> bool:
    return len(d) > 1 and (d[1] == R_DATA or d[1] == R_RETRANSMIT)


def plan_runs(
    datagrams: Sequence[bytes],
    *,
    max_segments: int = MAX_SEGMENTS,
    max_bytes: int = MAX_BYTES,
) -> list[tuple[int, list[bytes]]]:
    """Split ``datagrams`` (for one address, in order) into GSO runs: ``(segment_size, parts)``.

    ``b"".join(parts)`` is the run's buffer: every datagram but the run's last is ``segment_size``
    long, padded with zero bytes where shorter (by at most PAD_LIMIT, and only DATA/RETRANSMIT
    packets); the last is at most ``segment_size`` and never padded. Order is kept. A run of one is a
    plain datagram (send it with ``sendto``).
    """
    runs: list[tuple[int, list[bytes]]] = []
    n = len(datagrams)
    i = 0
    while i < n:
        first = datagrams[i]
        size = smallest = len(first)
        j = i + 1
        while j < n and j - i < max_segments:
            d = datagrams[j]
            length = len(d)
            if length > size:
                # A larger datagram raises the segment size: everything before it gets padded to it.
                if (
                    length - smallest > PAD_LIMIT
                    or (j - i + 1) * length > max_bytes
                    or not all(_paddable(x) for x in datagrams[i:j] if len(x) < length)
                ):
                    break
                size = length
            elif length < size:
                if (j - i + 1) * size > max_bytes:
                    break
                if size - length > PAD_LIMIT or not _paddable(d):
                    j += 1  # it may close the run unpadded: the last segment may be shorter
                    break
                smallest = length
            elif (j - i + 1) * size > max_bytes:
                break
            j += 1
        if j - i == 1:
            runs.append((len(first), [first]))
        else:
            parts: list[bytes] = []
            for k in range(i, j - 1):
                d = datagrams[k]
                parts.append(d)
                if len(d) < size:
                    parts.append(_ZEROS[size - len(d)])
            parts.append(datagrams[j - 1])
            runs.append((size, parts))
        i = j
    return runs
