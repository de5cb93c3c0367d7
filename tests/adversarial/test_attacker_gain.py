"""Cheating is self-limiting (paper section 2.2): each misbehaving-client strategy of
``bench/attacks.py`` gets at most 1.5x what an honest client gets on the same path, and never grows
geometrically. Before the hardening, the same harness measured 285x (all timeout attempts at once)
and 6.3x (fake holes) over 8 round trips."""

from __future__ import annotations

import pytest

from bench import attacks

ROUNDS = 12


@pytest.fixture(scope="module")
def honest_packets() -> int:
    return attacks.measure(attacks.honest, ROUNDS).data_packets


@pytest.mark.parametrize("name", [n for n in attacks.STRATEGIES if n != "honest"])
def test_gain_is_bounded(name: str, honest_packets: int) -> None:
    run = attacks.measure(attacks.STRATEGIES[name], ROUNDS)
    assert run.sent_extra > 0, "the strategy must actually attack"
    assert run.data_packets <= 1.5 * honest_packets, (name, run.data_packets, honest_packets, run.dropped)
    assert sum(run.dropped.values()) > 0


def test_no_geometric_growth_from_timeouts() -> None:
    """Doubling the attack's duration at most doubles the timeout answers beyond honest traffic."""
    extra = []
    for rounds in (ROUNDS // 2, ROUNDS):
        honest = attacks.measure(attacks.honest, rounds).data_packets
        attacked = attacks.measure(attacks.STRATEGIES["timeouts (all 16 attempts at once)"], rounds)
        extra.append(attacked.data_packets - honest)
    assert extra[1] <= 2 * extra[0] + 8, extra
