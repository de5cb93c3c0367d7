"""The client's SACK record of one nonce epoch, and the proofs built from it.

The record holds the packets of the epoch from ``e0`` on: ``rcv_nxt`` (every packet below it is
*final*: received or declared lost), the prefix XORs ``px`` of the nonces of final packets (lost ones
count as 0, so the summary of any received run is one XOR), the sorted list of lost runs, and the
packets received above ``rcv_nxt`` with their nonces. A hole with ``DUPTHRESH`` packets received
above it is declared lost. What a proof reports about ``[base, k]`` with ``k < rcv_nxt`` therefore
never changes later (the SACK-proof prefix property, ``PROTOCOL.md`` section 7), and a packet that
turns up after it was declared lost never enters a proof.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Final

from trickles import wire

DUPTHRESH: Final = 3
"""Packets received above a hole before it is declared lost (the initial reordering tolerance)."""
MAX_DUPTHRESH: Final = 64
"""Reordering tolerance grows (like Linux's ``tcp_reordering``) when a packet declared lost turns
up after all: the path reorders, as a sprayer across replicas does. It never exceeds this."""

ProofBlock = tuple[int, int, int]
"""A received run ``(first, last, XOR of its nonces)``, as a request carries it."""


class SackRecord:
    """Received and lost packets of the current epoch; builds SACK proofs."""

    __slots__ = ("e0", "lost", "lost_lefts", "ooo", "px", "rcv_nxt")

    def __init__(self, base: int = 1) -> None:
        self.e0 = base  # first packet number of the record
        self.rcv_nxt = base
        self.px: list[int] = [0]  # prefix XOR of nonces of final received packets from e0
        self.lost: list[tuple[int, int]] = []  # lost runs in the final region, sorted
        self.lost_lefts: list[int] = []
        self.ooo: dict[int, int] = {}  # seq -> nonce, received above rcv_nxt

    def advance(self, dupthresh: int = DUPTHRESH) -> list[tuple[int, int]]:
        """Finalize packets at rcv_nxt; declare holes lost once ``dupthresh`` packets lie above them.

        Returns the runs newly declared lost."""
        ooo = self.ooo
        px = self.px
        declared: list[tuple[int, int]] = []
        while True:
            nxt = self.rcv_nxt
            while nxt in ooo:
                px.append(px[-1] ^ ooo.pop(nxt))
                nxt += 1
            self.rcv_nxt = nxt
            if len(ooo) < dupthresh:
                return declared
            nxt = min(ooo)
            lo, hi = self.rcv_nxt, nxt - 1
            self.lost.append((lo, hi))
            self.lost_lefts.append(lo)
            px.extend([px[-1]] * (hi - lo + 1))
            declared.append((lo, hi))
            self.rcv_nxt = nxt

    def reordering(self, seq: int) -> int:
        """For packet ``seq`` below rcv_nxt arriving late: if it had been declared lost, how many
        packets overtook it (the reordering degree, at least 1); else 0."""
        i = bisect_right(self.lost_lefts, seq) - 1
        if i >= 0 and self.lost[i][1] >= seq:
            return self.rcv_nxt + len(self.ooo) - seq
        return 0

    def proof(self, base: int, k: int) -> list[ProofBlock] | None:
        """Received runs of [base, k] with their nonce summaries (all final); None if the proof would
        need more than ``wire.MAX_PROOF_BLOCKS`` blocks."""
        out: list[ProofBlock] = []
        px, e0 = self.px, self.e0
        pos = base
        i = max(bisect_left(self.lost_lefts, base) - 1, 0)
        lost = self.lost
        while i < len(lost) and lost[i][0] <= k:
            lo, hi = lost[i]
            if hi >= pos:
                if lo > pos:
                    out.append((pos, lo - 1, px[lo - e0] ^ px[pos - e0]))
                pos = hi + 1
            i += 1
        if pos <= k:
            out.append((pos, k, px[k + 1 - e0] ^ px[pos - e0]))
        if len(out) > wire.MAX_PROOF_BLOCKS:
            return None
        return out

    def contiguous_right(self, base: int) -> int:
        """The last packet of the received run starting at ``base`` (``base - 1`` if none)."""
        if base < self.e0:
            return base - 1
        i = bisect_left(self.lost_lefts, base)
        for lo, hi in self.lost[max(i - 1, 0) :]:
            if hi >= base:
                return max(lo - 1, base - 1)
        if base > self.rcv_nxt:
            return base - 1
        right = self.rcv_nxt - 1
        while right + 1 in self.ooo:
            right += 1
        return right

    def run_xor(self, lo: int, hi: int) -> int:
        """XOR of the nonces of received packets ``lo..hi`` (final or not)."""
        e0, px = self.e0, self.px
        fin_hi = min(hi, self.rcv_nxt - 1)
        x = px[fin_hi + 1 - e0] ^ px[lo - e0] if fin_hi >= lo else 0
        for s in range(max(lo, self.rcv_nxt), hi + 1):
            x ^= self.ooo[s]
        return x


__all__ = ["DUPTHRESH", "MAX_DUPTHRESH", "ProofBlock", "SackRecord"]
