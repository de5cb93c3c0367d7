"""The replay filter: every key is accepted once within the horizon; a full filter rotates early
and then refuses only continuations older than what it still remembers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trickles.errors import Replay, Stale
from trickles.replay import ReplayFilter, ack_key, timeout_key

PERIOD = 1000


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 3 * PERIOD)), max_size=60))
def test_each_key_once_per_period(events: list[tuple[int, int]]) -> None:
    """A key used at t is refused for at least one period after t, and a key never used is never
    refused (model: last-use times)."""
    f = ReplayFilter(PERIOD, 1 << 20)
    last: dict[int, int] = {}
    now = 0
    for key, dt in events:
        now += dt
        k = ack_key(1, 0, 1, key)
        try:
            f.check([k], now, now)
        except Replay:
            assert key in last
            continue
        assert key not in last or now - last[key] >= PERIOD
        f.add([k], now)
        last[key] = now


def test_keys_name_events_not_datagrams() -> None:
    assert ack_key(1, 0, 1, 9) == ack_key(1, 0, 1, 9)
    assert len({ack_key(1, 0, 1, 9), ack_key(2, 0, 1, 9), ack_key(1, 1, 1, 9), ack_key(1, 0, 2, 9)}) == 4
    assert timeout_key(1, 5) != ack_key(1, 5, 1, 9)


def test_full_filter_rotates_instead_of_refusing_everyone() -> None:
    f = ReplayFilter(PERIOD, 100)
    for i in range(100):
        f.check([i], 0, 10)
        f.add([i], 10)
    # Full: a fresh continuation is still served (the filter rotates early)...
    f.check([1000], 500, 500)
    f.add([1000], 500)
    assert f.early_rotations == 1
    # ...what the kept generation remembers is still refused...
    with pytest.raises(Replay):
        f.check([5], 500, 500)
    # ...and a continuation issued before the kept generation began is refused as stale.
    for i in range(2000, 2100):
        f.check([i], 600, 600)
        f.add([i], 600)
    with pytest.raises(Stale):
        f.check([7], 5, 700)
    f.check([7], 600, 700)  # one issued after it is fine
    assert len(f) <= 2 * 100 + 1


def test_memory_is_bounded_under_a_flood() -> None:
    f = ReplayFilter(PERIOD, 1000)
    for i in range(50_000):
        f.check([i], i // 100, i // 100)
        f.add([i], i // 100)
    assert len(f) <= 2 * 1000
