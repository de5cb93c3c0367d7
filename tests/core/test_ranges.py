"""Property tests for :class:`RangeSet` against a plain set of integers (the model)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from trickles.ranges import RangeSet

SPAN = 64
bounds = st.tuples(st.integers(0, SPAN), st.integers(0, SPAN))
ops = st.lists(st.tuples(st.sampled_from(["add", "remove"]), bounds), max_size=40)


def _build(operations: list[tuple[str, tuple[int, int]]]) -> tuple[RangeSet, set[int]]:
    rs, model = RangeSet(), set()
    for op, (a, b) in operations:
        getattr(rs, op)(a, b)
        if op == "add":
            model |= set(range(a, b))
        else:
            model -= set(range(a, b))
    return rs, model


def _members(rs: RangeSet) -> set[int]:
    return {x for s, e in rs for x in range(s, e)}


@settings(max_examples=300, deadline=None)
@given(ops)
def test_matches_the_model_and_stays_sorted_disjoint_non_adjacent(
    operations: list[tuple[str, tuple[int, int]]],
) -> None:
    rs, model = _build(operations)
    runs = list(rs)
    assert _members(rs) == model
    assert all(s < e for s, e in runs)
    assert all(e1 < s2 for (_, e1), (s2, _) in itertools.pairwise(runs))  # gaps between runs
    assert len(rs) == len(runs) and bool(rs) == bool(model) and rs.total() == len(model)
    assert rs.first() == (runs[0] if runs else None)


@settings(max_examples=300, deadline=None)
@given(ops, bounds)
def test_missing_and_contains_agree_with_the_model(
    operations: list[tuple[str, tuple[int, int]]], query: tuple[int, int]
) -> None:
    rs, model = _build(operations)
    a, b = query
    gaps = rs.missing(a, b)
    assert {x for s, e in gaps for x in range(s, e)} == set(range(a, b)) - model
    assert all(s < e for s, e in gaps) and gaps == sorted(gaps)
    if a < b:
        assert rs.contains(a, b) == (set(range(a, b)) <= model)


@settings(max_examples=300)
@given(ops, st.integers(1, SPAN), st.integers(0, SPAN + 1))
def test_take_first_takes_the_lowest_run_up_to_a_length_and_a_limit(
    operations: list[tuple[str, tuple[int, int]]], max_len: int, limit: int
) -> None:
    rs, model = _build(operations)
    taken = rs.take_first(max_len, limit)
    if not model or min(model) >= limit:
        assert taken is None
        assert _members(rs) == model
        return
    assert taken is not None
    a, b = taken
    expect_end = a
    while expect_end in model and expect_end - a < max_len and expect_end < limit:
        expect_end += 1
    assert (a, b) == (min(model), expect_end)
    assert _members(rs) == model - set(range(a, b))
