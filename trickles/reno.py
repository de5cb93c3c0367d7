"""TCP Reno's congestion window as a closed form, ``TCPCwnd(k)`` (paper section 2.5, Figure 5).

A Trickles server keeps no TCB. To know how many packets TCP Reno would release on the ACK of packet
``k`` it evaluates Reno's window after ``k`` as a function of the epoch's initial conditions only:
``base`` (TCPBase: the first packet of the loss-free piece), ``start`` (startCwnd: the window in force
at ``base``) and ``ssthresh``. Within a piece without losses Reno's window is a pure function of the
number of ACKs since ``base``:

* slow start: +1 per ACK event while the window is below ssthresh;
* congestion avoidance: the window holds at value ``w`` for exactly ``w`` ACK events, then grows by 1.

With ``m`` ACK events since ``base`` and ``s = max(ssthresh, start)``, slow start gives
``start + m`` while ``m < s - start``. Past that point, with ``m' = m - (s - start)``, the window is the
largest ``w`` with ``s + (s+1) + ... + (w-1) <= m'``, which solves to
``w = floor((1 + sqrt((2s - 1)^2 + 8 m')) / 2)``; ``isqrt`` computes that floor exactly
(``floor((1 + sqrt(x)) / 2) == (1 + isqrt(x)) // 2`` for every integer ``x >= 0``).

Delayed ACKs: with ``ack_div = 2`` one ACK *event* happens per two packets, as with a delayed-ACK
receiver, so ``m = (k - base) // 2``. :func:`reno_cwnd_direct` is the step-by-step reference the tests
hold the closed form to.
"""

from __future__ import annotations

from math import isqrt
from typing import Final

MAX_CWND: Final = 8191
"""Largest window (packets) the closed form returns; as in the original implementation (2**13 - 1)."""


def tcp_cwnd(k: int, base: int, start: int, ssthresh: int, ack_div: int = 1) -> int:
    """Reno's window (packets) after the ACK of packet ``k``; ``start`` for ``k < base``."""
    if k < base:
        return start
    m = (k - base) // ack_div
    s = ssthresh if ssthresh > start else start
    if s > MAX_CWND:
        s = MAX_CWND
    ss_events = s - start
    if m < ss_events:
        w = start + m
    else:
        t = 2 * s - 1
        w = (1 + isqrt(t * t + 8 * (m - ss_events))) >> 1
    return w if w < MAX_CWND else MAX_CWND


def reno_cwnd_direct(k: int, base: int, start: int, ssthresh: int, ack_div: int = 1) -> int:
    """The same window by direct per-ACK simulation of Reno (O(k)); the reference for tests."""
    cwnd = start
    acc = 0
    for a in range(base + 1, k + 1):
        if (a - base) % ack_div:
            continue  # the delayed-ACK receiver acknowledges every ack_div-th packet
        if cwnd < ssthresh:
            cwnd += 1
        else:
            acc += 1
            if acc >= cwnd:
                cwnd += 1
                acc = 0
        cwnd = min(cwnd, MAX_CWND)
    return cwnd
