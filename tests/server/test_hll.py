"""The distinct-clients sketch: fixed size, error within its stated bound, windowed forgetting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trickles.server.hll import ActiveClients, HyperLogLog

SIGMA = 1.04 / (1 << 6)  # relative standard error for p = 12 (m = 4096 registers)


@settings(derandomize=True, max_examples=40, deadline=None)
@given(n=st.integers(0, 30_000), key=st.binary(min_size=16, max_size=16), dup=st.integers(1, 3))
def test_estimate_within_four_sigma(n: int, key: bytes, dup: int) -> None:
    h = HyperLogLog(12, key)
    for _ in range(dup):  # repeats of the same items change nothing
        for i in range(n):
            h.add(b"\x7f\x00" + i.to_bytes(4, "big"))
    assert len(h.registers) == 4096  # the size never depends on n
    assert abs(h.estimate() - n) <= 4 * SIGMA * n + 1


def test_small_counts_nearly_exact() -> None:
    h = HyperLogLog(12, bytes(16))  # fixed key: deterministic
    for i in range(60):
        h.add(i.to_bytes(18, "big"))
        assert abs(h.estimate() - (i + 1)) < 1.5  # at most a register collision off


def test_merge_is_union() -> None:
    key = bytes(16)
    a, b = HyperLogLog(12, key), HyperLogLog(12, key)
    for i in range(3000):
        a.add(i.to_bytes(4, "big"))
    for i in range(2000, 6000):
        b.add(i.to_bytes(4, "big"))
    assert abs(a.merge(b).estimate() - 6000) <= 4 * SIGMA * 6000
    with pytest.raises(ValueError, match="differ"):
        a.merge(HyperLogLog(12, bytes(15) + b"x"))


def test_window_forgets_after_two_rotations() -> None:
    ac = ActiveClients(window_s=30)
    assert not ac.rotate_due(0.0)
    for i in range(10):
        ac.add(bytes([127, 0, 0, 1, 0, i]))
    assert round(ac.estimate()) == 10
    assert not ac.rotate_due(29.9)
    assert ac.rotate_due(30.0)  # the 10 move to the previous window, still counted
    ac.add(bytes([127, 0, 0, 2, 0, 0]))
    assert round(ac.estimate()) == 11
    assert ac.rotate_due(60.0)  # the 10 were not seen again: forgotten
    assert round(ac.estimate()) == 1
    assert ac.rotate_due(90.0)
    assert ac.estimate() == 0.0
