"""The closed-form TCPCwnd(k) against a step-by-step Reno simulation."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trickles.reno import MAX_CWND, reno_cwnd_direct, tcp_cwnd


@pytest.mark.parametrize("ack_div", [1, 2])
@pytest.mark.parametrize("start", [1, 2, 3, 5])
@pytest.mark.parametrize("ssthresh", [1, 2, 3, 4, 10, 66, 16383])
def test_closed_form_matches_direct_simulation(ack_div: int, start: int, ssthresh: int) -> None:
    base = 7
    direct = [reno_cwnd_direct(k, base, start, ssthresh, ack_div) for k in range(base, base + 800)]
    closed = [tcp_cwnd(k, base, start, ssthresh, ack_div) for k in range(base, base + 800)]
    assert closed == direct


def test_known_vector_slow_start_then_avoidance() -> None:
    # Slow start from 2 to ssthresh 10, then the window holds at w for w ACKs.
    got = [tcp_cwnd(k, 0, 2, 10) for k in range(41)]
    want = [2, 3, 4, 5, 6, 7, 8, 9] + [10] * 10 + [11] * 11 + [12] * 12
    assert got == want


def test_after_recovery_vector() -> None:
    got = [tcp_cwnd(k, 100, 8, 8) for k in range(100, 100 + 8 + 9)]
    assert got == [8] * 8 + [9] * 9


@given(st.integers(0, 10**6), st.integers(1, 64), st.integers(1, 20000), st.sampled_from([1, 2]))
def test_monotone_and_bounded(m: int, start: int, ssthresh: int, ack_div: int) -> None:
    w0 = tcp_cwnd(m, 0, start, ssthresh, ack_div)
    w1 = tcp_cwnd(m + 1, 0, start, ssthresh, ack_div)
    assert start <= w0 <= w1 <= max(start, MAX_CWND)
    assert w1 - w0 <= 1
