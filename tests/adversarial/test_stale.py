"""Stale continuations, and replays after the horizon, on the in-process engine.

``trickles serve`` has no horizon option and its horizon is 120 s, so the real-server suite cannot
wait for a continuation to go stale; the engine takes the clock as an argument, so here it can.
"""

from __future__ import annotations

from trickles.errors import DropReason

from ..core.helpers import ADDR, T0, engine, handshake

HORIZON, SKEW = 120.0, 5.0


def test_stale_continuation_and_replay_after_the_horizon() -> None:
    eng = engine(horizon_s=HORIZON, skew_s=SKEW)
    _, reqs = handshake(eng, T0)
    req = reqs[0]
    # Unused, but presented after the horizon: stale, nothing sent.
    late = eng.step(req, ADDR, T0 + HORIZON + 1)
    assert (late.drop, late.datagrams) == (DropReason.STALE, [])
    # Presented from further in the past than the allowed skew (a clock running behind): stale.
    early = eng.step(req, ADDR, T0 - SKEW - 1)
    assert (early.drop, early.datagrams) == (DropReason.STALE, [])
    # Within the horizon it is served once, then a replay; after the horizon the replay is stale.
    ok = eng.step(req, ADDR, T0 + 1)
    assert ok.drop is None and ok.datagrams
    assert eng.step(req, ADDR, T0 + 2).drop is DropReason.REPLAY
    again = eng.step(req, ADDR, T0 + HORIZON + 1)
    assert (again.drop, again.datagrams) == (DropReason.STALE, [])
    assert eng.stats.dropped == {DropReason.STALE: 3, DropReason.REPLAY: 1}


def test_continuation_held_to_the_edge_of_the_horizon_is_served() -> None:
    """The boundary the stale test relies on: just inside the horizon, the same request works."""
    eng = engine(horizon_s=HORIZON, skew_s=SKEW)
    _, reqs = handshake(eng, T0)
    res = eng.step(reqs[0], ADDR, T0 + HORIZON - 0.5)
    assert res.drop is None and res.datagrams
