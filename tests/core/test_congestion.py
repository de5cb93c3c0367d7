"""The per-trickle decision, checked against worked examples (docs/PROTOCOL.md section 7)."""

from __future__ import annotations

import pytest

from trickles.congestion import plan_request, plan_timeout
from trickles.continuation import Continuation, Phase
from trickles.errors import BadSackProof, ProtocolViolation


def cont(
    seq: int, base: int = 1, start: int = 3, ssthresh: int = 16383, phase: int = Phase.NORMAL
) -> Continuation:
    return Continuation(1, phase, 2, 77, seq, 5, base, start, ssthresh, 0, 0)


def test_normal_steps_release_a_dense_run() -> None:
    """Successive requests release k+1..k+W(k) without gaps or overlaps."""
    last = 3  # the first window is 1..3
    for k in range(1, 200):
        kind_full2 = k - 1 >= 7 and (k - 1) % 2 == 0
        if k - 1 >= 7 and (k - 1) % 2 == 1:
            continue  # MINIMAL packets clock no request
        p = plan_request(cont(k), [(1, k)], 20)
        assert p.retransmits == () and not p.new_piece
        assert p.lo == last + 1, (k, kind_full2, p)
        last = p.hi


@pytest.mark.parametrize(
    "k,ranges,retransmits,children",
    [
        (21, [(1, 19), (21, 21)], (20,), None),
        (23, [(1, 19), (21, 23)], (), None),
        (25, [(1, 19), (21, 25)], (), None),
        (27, [(1, 19), (21, 27)], (), (32, 33)),
        (29, [(1, 19), (21, 29)], (), (34, 35)),
        (31, [(1, 19), (21, 31)], (), (36, 37)),
    ],
)
def test_recovery_worked_example(
    k: int, ranges: list[tuple[int, int]], retransmits: tuple[int, ...], children: tuple[int, int] | None
) -> None:
    """Packet 20 lost alone: cwnd_at_loss 12, new window 6, survivors clock 32..37."""
    p = plan_request(cont(k), ranges, 20)
    assert p.retransmits == retransmits
    assert (p.lo, p.hi) == children if children else p.hi < p.lo
    assert (p.base, p.start, p.ssthresh, p.phase, p.new_piece) == (32, 6, 6, Phase.BOOTSTRAP, True)


def test_regen_regenerates_a_lost_window_tail() -> None:
    """Packets 30 and 31 lost too: no request for 31 exists, so REGEN on 29 clocks 36..37."""
    p = plan_request(cont(29), [(1, 19), (21, 29)], 20, regen=True)
    assert p.retransmits == (30, 31)
    assert (p.lo, p.hi, p.base, p.start) == (36, 37, 32, 6)
    with pytest.raises(ProtocolViolation):
        plan_request(cont(29), [(1, 29)], 20, regen=True)  # no loss: nothing to regenerate
    with pytest.raises(BadSackProof):
        plan_request(cont(0, phase=Phase.SYNACK), [], 20, regen=True)


def test_burst_limit_caps_retransmissions() -> None:
    # Packets 10..14 lost; the request for 15 owns them all but may resend only burst_limit.
    assert plan_request(cont(15), [(1, 9), (15, 15)], 20).retransmits == (10, 11, 12, 13, 14)
    assert plan_request(cont(15), [(1, 9), (15, 15)], 3).retransmits == (10, 11, 12)


def test_timeout_halves_then_holds() -> None:
    first = plan_timeout(cont(40), [(1, 30)], 0, 2)
    assert (first.base, first.start, first.phase) == (31, 2, Phase.SLOWSTART)
    # ssthresh is half the window in force when the continuation (packet 40) was sent: Reno's
    # FlightSize / 2 at the timeout, whatever the proof reaches.
    w40 = 3 + 39 // 2  # slow start with delayed ACKs: one more per two packets
    assert first.ssthresh == w40 // 2
    assert first.epoch == 6
    # Proving nothing (the client's 4th attempt) does not collapse it.
    assert plan_timeout(cont(40), [], 3, 2).ssthresh == w40 // 2
    # A proof reaching past the window open when packet 40 was sent is refused (no wraparound).
    with pytest.raises(BadSackProof):
        plan_timeout(cont(40), [(1, 40 + w40 + 1)], 0, 2)
    # The restarted window was lost as well: RFC 5681 keeps ssthresh.
    again = cont(31, base=31, start=2, ssthresh=first.ssthresh, phase=Phase.SLOWSTART)
    second = plan_timeout(again, [], 1, 2)
    assert second.ssthresh == first.ssthresh and second.base == 31 and second.epoch == 5 + 2
    with pytest.raises(BadSackProof):
        plan_timeout(cont(40), [(2, 30)], 0, 2)  # must start at TCPBase
