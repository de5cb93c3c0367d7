"""The per-trickle congestion decision: continue, split or terminate (paper section 2.5).

Theory of operation
-------------------
A request acknowledges one packet ``k`` (or, with delayed ACKs, the pair ``k-1, k``) and carries the
continuation that came in packet ``k`` plus a SACK proof of the packets received in ``[base, k]``.
From these alone, :func:`plan_request` decides which packets the server sends in response. Both
sides run it: the server to act, the client to size its data requests to exactly the packets that
will come back (section 4.3), and to skip requests the server would terminate.

*Loss-free (continue / split).* Within a loss-free piece that started at ``base`` with window
``start``, TCP Reno's window after the ACK of ``k`` is ``W(k) = tcp_cwnd(k, base, start, ssthresh)``,
and the packets in flight after that ACK are ``k+1 .. k+W(k)``. So the request acknowledging
``first..k`` releases exactly packets ``first-1+W(first-1)+1 .. k+W(k)``: one packet (continue) when
the window is unchanged, more (split) when it grew. Successive requests produce one dense run of
packet numbers without gaps or overlaps, which is what lets each trickle be processed alone.

*Fast recovery.* When the proof shows a hole in ``[base, k]``, let ``L`` be the first lost packet and
``ack_before`` the last ACK before the one that would have acknowledged ``L``. Reno had
``cwnd_at_loss = W(ack_before)`` packets in flight, up to ``last_regular = ack_before + cwnd_at_loss``,
and halves: ``new_cwnd = max(cwnd_at_loss // 2, 2)``. Every request of the old piece computes the
same values (the client keeps the SACK-proof prefix property, so all see the same ``L``). The ACKs in
``(L, last_regular]`` are the survivors; the first of them are terminated and the last ``new_cwnd``
each clock one *bootstrap* packet, numbered from ``last_regular + 1``, which starts a new loss-free
piece with ``base = last_regular + 1`` and ``start = ssthresh = new_cwnd`` (congestion avoidance).
A request also owns the ACKs of lost packets just below it (the packets whose own requests can never
come): it retransmits those packets (at most ``burst_limit``) and generates the bootstrap packets
their ACKs would have clocked, so lost trickles are regenerated as a group.

*Retransmit timeout.* Only the client has a timer. Its RTO request names the contiguous run
``[base, right]`` it received; Reno's ``ssthresh`` becomes ``max(W(right) // 2, 2)`` and slow start
restarts at ``rto_cwnd`` packets from ``right + 1`` in a fresh nonce epoch.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Final, NamedTuple

from trickles.continuation import Continuation, Phase, new_namedtuple
from trickles.errors import BadSackProof, ProtocolViolation
from trickles.reno import tcp_cwnd
from trickles.wire import MAX_SEQ, ReqType

MAX_EPOCH: Final = 0xFFFF
"""Epochs only grow (a timeout opens epoch ``epoch + 1 + attempt``); past this the connection is
refused further timeouts and must reconnect, so an epoch (hence a nonce) is never reused. Initial
epochs are below 2**15: every connection has at least 32,768 timeouts."""
MAX_OWN: Final = 128
"""A recovery request owns (and consumes) at most this many acks below it: bounds its replay-filter
work. A longer run of consecutive losses is left to the retransmit timeout, as in TCP."""

FULL1_INTERVAL: Final = 7
"""With delayed ACKs the first packets of every piece are still acknowledged one by one (odd)."""


_SYNACK: Final = int(Phase.SYNACK)  # compared per request: a plain int (Final: a C static when compiled)
_NORMAL: Final = Phase.NORMAL  # the member itself, as the plans have always carried it


class AckKind:
    """Which continuation a packet carries (``PROTOCOL.md`` section 7.2). Plain ``Final`` ints, not an
    enum: they are compared on the per-packet path."""

    FULL1: Final = 1  # the request for this packet acknowledges it alone
    FULL2: Final = 2  # the request acknowledges this packet and the one before it
    MINIMAL: Final = 0  # no continuation; acknowledged by the next packet's request


def ack_kind(offset: int, ack_div: int) -> int:
    """Which continuation packet ``base + offset`` carries."""
    if ack_div == 1 or offset < FULL1_INTERVAL:
        return AckKind.FULL1
    return AckKind.FULL2 if offset % 2 == 0 else AckKind.MINIMAL


class ProtocolConfig(NamedTuple):
    """Protocol constants. ``burst_limit`` and ``rto_cwnd`` must be the same at both ends (the client
    predicts the server's plans with them); ``initial_cwnd``, ``initial_ssthresh`` and ``ack_div``
    are chosen by the server and travel inside the continuations."""

    initial_cwnd: int = 3
    initial_ssthresh: int = 16383
    rto_cwnd: int = 2
    burst_limit: int = 20
    ack_div: int = 2
    rto_min_ms: int = 200
    """Timeout attempt ``a`` is accepted only on a continuation at least ``rto_min_ms * 2**a`` old
    (its timestamp is MAC-covered): the client's own timer, RFC 6298's minimum and backoff."""


class Plan(NamedTuple):
    """What the server sends for one request.

    ``retransmits`` are old packet numbers resent without a continuation; ``lo..hi`` (empty when
    ``hi < lo``) are the new packets, all sharing the continuation fields below.
    """

    retransmits: tuple[int, ...]
    lo: int
    hi: int
    phase: int
    base: int
    start: int
    ssthresh: int
    epoch: int
    new_piece: bool  # the children start a new loss-free piece (recovery or timeout)
    own_lo: int = 0
    own_hi: int = -1
    """The acks of the request's piece this request consumes (each may clock one request only)."""

    @property
    def n_children(self) -> int:
        return self.hi - self.lo + 1 if self.hi >= self.lo else 0

    @property
    def n_slots(self) -> int:
        return len(self.retransmits) + self.n_children


def _w(k: int, c: Continuation) -> int:
    return tcp_cwnd(k, c.base, c.start, c.ssthresh, c.ack_div)


def check_ranges(c: Continuation, ranges: Sequence[tuple[int, int]]) -> None:
    """The received runs of a request must be sorted, disjoint, within ``[base, seq]`` and end at seq."""
    prev = c.base - 1
    for first, last in ranges:
        if first <= prev or last < first:
            raise BadSackProof("SACK blocks must be sorted, disjoint and start at or after TCPBase")
        prev = last + 1
    if not ranges or ranges[-1][1] != c.seq:
        raise BadSackProof("SACK proof must cover the acknowledged packet")


def plan_normal(c: Continuation) -> Plan:
    """Continue/split: the loss-free step (also the first request of a connection)."""
    k = c.seq
    if c.phase == _SYNACK:
        return new_namedtuple(
            Plan,
            (
                (),
                c.base,
                c.base + c.start - 1,
                Phase.NORMAL,
                c.base,
                c.start,
                c.ssthresh,
                c.epoch,
                False,
                k,
                k,
            ),
        )
    kind = ack_kind(k - c.base, c.ack_div)
    first = k - 1 if kind == AckKind.FULL2 else k
    lo = first + _w(first - 1, c)
    hi = k + _w(k, c)
    return new_namedtuple(Plan, ((), lo, hi, _NORMAL, c.base, c.start, c.ssthresh, c.epoch, False, k, k))


def _last_full_received(ranges: Sequence[tuple[int, int]], below: int, b: int, d: int) -> int:
    """The last received packet before ``below`` that carried a continuation (``b - 1`` if none).

    O(SACK blocks): within a run only its last packet, or the one before when that is minimal,
    can be the answer.
    """
    j = bisect_right([run[0] for run in ranges], below - 1) - 1
    while j >= 0:
        first, last = ranges[j]
        p = min(last, below - 1)
        if ack_kind(p - b, d) == AckKind.MINIMAL:
            p -= 1
        if p >= first:
            return p
        j -= 1
    return b - 1


def _holes(ranges: Sequence[tuple[int, int]], lo: int, hi: int, limit: int) -> list[int]:
    """The first ``limit`` packets of ``[lo, hi]`` not in ``ranges`` (O(blocks + limit))."""
    out: list[int] = []
    p = lo
    for first, last in ranges:
        if last < p:
            continue
        while p < first and p <= hi and len(out) < limit:
            out.append(p)
            p += 1
        if p > hi or len(out) >= limit:
            break
        p = max(p, last + 1)
    while p <= hi and len(out) < limit:
        out.append(p)
        p += 1
    return out


def plan_recovery(
    c: Continuation, ranges: Sequence[tuple[int, int]], burst_limit: int, regen: bool = False
) -> Plan:
    """Fast retransmit/recovery with survivors (the proof shows a hole in [base, seq]).

    ``regen``: the client's REGEN request on the last continuation it received of the old piece,
    sent once it knows every packet after it was lost. Those packets' requests can never come, so
    nobody would clock their share of the bootstrap packets and the new piece would start short
    (and see the packets it never got as a second loss). REGEN owns exactly those acks: it
    regenerates their bootstrap packets and retransmits the lost tail (paper 2.5, condition (b),
    applied to the end of the window, where no later request exists to apply it).
    """
    b, k, d = c.base, c.seq, c.ack_div
    L = b if ranges[0][0] > b else ranges[0][1] + 1
    ack_before = L - 2 if ack_kind(L - b, d) == AckKind.FULL2 else L - 1
    cwnd_at_loss = _w(ack_before, c)
    last_regular = ack_before + cwnd_at_loss
    if k > last_regular:
        raise ProtocolViolation("acknowledged packet lies beyond the window at the loss")
    new_cwnd = max(cwnd_at_loss // 2, 2)
    # The last ACK of the old piece: a minimal packet at last_regular would be acknowledged together
    # with last_regular + 1, which is already a bootstrap packet, so its ACK clocks nothing.
    last_ack = last_regular - 1 if ack_kind(last_regular - b, d) == AckKind.MINIMAL else last_regular
    s0 = max(L + 1, last_ack - new_cwnd + 1)

    retransmits: list[int]
    if regen:
        # Owns the acks after k, all lost: (k, last_ack]; retransmits the lost tail.
        own_lo, own_hi = k + 1, min(last_ack, k + MAX_OWN)
        retransmits = list(range(k + 1, min(last_regular, k + burst_limit) + 1))
    else:
        # The acks this request owns: (q, k], q the last received FULL packet before its first ack.
        first = k - 1 if ack_kind(k - b, d) == AckKind.FULL2 else k
        q = _last_full_received(ranges, first, b, d)
        own_lo, own_hi = max(q + 1, k - MAX_OWN + 1), k
        retransmits = _holes(ranges, max(own_lo, L), k, burst_limit)

    a_lo = max(own_lo, s0)
    a_hi = min(own_hi, last_ack)
    b2 = last_regular + 1
    if a_lo <= a_hi:
        lo = b2 + (a_lo - s0)
        hi = b2 + new_cwnd - 1 if a_hi == last_ack else b2 + (a_hi - s0)
    else:
        lo, hi = b2, b2 - 1
    return Plan(
        tuple(retransmits), lo, hi, Phase.BOOTSTRAP, b2, new_cwnd, new_cwnd, c.epoch, True, own_lo, own_hi
    )


def plan_request(
    c: Continuation, ranges: Sequence[tuple[int, int]], burst_limit: int, regen: bool = False
) -> Plan:
    """The plan for a REQUEST (or REGEN) carrying ``c`` and proving receipt of ``ranges`` (in [base, seq])."""
    if c.phase == _SYNACK:
        if ranges or regen:
            raise BadSackProof("nothing to prove before the first window")
        return _bounded(plan_normal(c))
    if ack_kind(c.seq - c.base, c.ack_div) == AckKind.MINIMAL:
        raise ProtocolViolation("a minimal packet cannot clock a request")
    check_ranges(c, ranges)
    if len(ranges) == 1 and ranges[0][0] == c.base:
        if regen:
            raise ProtocolViolation("REGEN is only for a window that is recovering from a loss")
        return _bounded(plan_normal(c))
    return _bounded(plan_recovery(c, ranges, burst_limit, regen))


def timeout_allowed(c: Continuation, attempt: int, age_ms: int, rto_min_ms: int) -> bool:
    """Attempt ``a`` needs a continuation at least ``rto_min_ms * 2**a`` old (the client's timer
    with backoff could not fire sooner). Without this, one continuation answers every attempt at
    once and each answer's continuations can time out again: geometric amplification."""
    return age_ms >= rto_min_ms << attempt


def plan_timeout(c: Continuation, ranges: Sequence[tuple[int, int]], attempt: int, rto_cwnd: int) -> Plan:
    """Slow start after the client's retransmit timeout; ``ranges`` is ``[(base, right)]`` or empty.

    ``right`` can lie beyond ``c.seq`` (packets after the newest continuation), but not beyond the
    window that was open when ``c`` was sent. ssthresh becomes half the window in force when ``c``
    was sent (Reno's FlightSize/2 at the timeout), or the proven window if larger; a repeated
    timeout of a restarted window that got nothing through holds it (RFC 5681).
    """
    if ranges:
        if len(ranges) != 1 or ranges[0][0] != c.base or ranges[0][1] < c.base:
            raise BadSackProof("a timeout request proves one run starting at TCPBase")
        right = ranges[0][1]
        if right > c.seq + _w(c.seq, c):
            raise BadSackProof("a timeout request proves packets beyond the window")
    else:
        right = c.base - 1
    if right < c.base and c.phase == Phase.SLOWSTART:
        ssthresh = c.ssthresh
    else:
        ssthresh = max(_w(max(right, c.seq), c) // 2, 2)
    b2 = right + 1
    epoch = c.epoch + 1 + attempt
    if epoch > MAX_EPOCH:
        raise ProtocolViolation("nonce epochs exhausted: the connection must reconnect")
    return _bounded(Plan((), b2, b2 + rto_cwnd - 1, Phase.SLOWSTART, b2, rto_cwnd, ssthresh, epoch, True))


def _bounded(plan: Plan) -> Plan:
    if plan.hi > MAX_SEQ:
        raise ProtocolViolation("packet numbers exhausted: the connection must reconnect")
    return plan


# --- the decision table -------------------------------------------------------------------------------


class Outcome:
    """What the server does with a request: one cell of :data:`DECISIONS`."""

    FIRST_WINDOW: Final = "first window"  # the deferred initial window (section 7.4)
    NORMAL: Final = "normal step"  # continue or split (section 7.4)
    RECOVERY: Final = "recovery step"  # fast retransmit and recovery, REGEN (section 7.5)
    TIMEOUT: Final = "timeout step"  # slow start in a new epoch (section 7.6)
    CLOSE: Final = "close"  # CLOSE event to the app, nothing sent
    PROTOCOL: Final = "protocol error"  # ProtocolViolation: authentic but not allowed
    FORGED_PROOF: Final = "forged proof"  # BadSackProof: the proof is not well formed


class ProofShape:
    """The shape of a request's SACK proof, for the decision table."""

    NONE: Final = "none"  # no block
    LOSS_FREE: Final = "loss-free"  # one block [base, seq]
    HOLES: Final = "holes"  # well-formed blocks in [base, seq] ending at seq, with a hole


ANY: Final = None
DecisionRow = tuple[int | None, int | None, int | None, str | None, str]

DECISIONS: Final[tuple[DecisionRow, ...]] = (
    # request type    continuation phase  ack kind of seq   proof shape          outcome
    (ReqType.CLOSE, ANY, ANY, ANY, Outcome.CLOSE),  # any proof that verifies
    (ReqType.RTO, ANY, ANY, ProofShape.HOLES, Outcome.FORGED_PROOF),  # one run from base only
    (ReqType.RTO, ANY, ANY, ANY, Outcome.TIMEOUT),  # after the age gate (section 7.6)
    (ReqType.REQUEST, Phase.SYNACK, ANY, ProofShape.NONE, Outcome.FIRST_WINDOW),
    (ANY, Phase.SYNACK, ANY, ANY, Outcome.FORGED_PROOF),  # nothing to prove yet, nothing to REGEN
    (ANY, ANY, ANY, ProofShape.NONE, Outcome.FORGED_PROOF),  # the proof must cover seq
    (ANY, ANY, AckKind.MINIMAL, ANY, Outcome.PROTOCOL),  # a minimal packet clocks no request
    (ReqType.REQUEST, ANY, ANY, ProofShape.LOSS_FREE, Outcome.NORMAL),
    (ReqType.REGEN, ANY, ANY, ProofShape.LOSS_FREE, Outcome.PROTOCOL),  # only while recovering
    (ANY, ANY, ANY, ProofShape.HOLES, Outcome.RECOVERY),  # REQUEST, or REGEN (section 7.5.1)
)
"""The (request type x phase x ack kind x proof shape) decision, first matching row wins (``ANY``
matches everything): ``PROTOCOL.md`` section 7.8. It documents the branches of
``ServerEngine._request`` and :func:`plan_request`, which are tested against it exhaustively
(``tests/core/test_decisions.py``); the hot path does not consult it."""


_DECIDED: Final = frozenset((ReqType.REQUEST, ReqType.REGEN, ReqType.RTO, ReqType.CLOSE))


def decide(rtype: int, phase: int, kind: int, shape: str) -> str:
    """The outcome :data:`DECISIONS` gives a request (a proof that verifies, a timeout old enough)."""
    if rtype not in _DECIDED:
        raise ValueError("request type outside the table")  # a SYN has no continuation
    for row in DECISIONS:
        if all(
            want is None or want == have
            for want, have in zip(row[:4], (rtype, phase, kind, shape), strict=True)
        ):
            return row[4]
    raise AssertionError("DECISIONS has no row for this cell")
