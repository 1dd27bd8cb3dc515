"""pars/model/padding.py: the cheapest cut of length-sorted prompts into forward passes, against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pars.model.padding import plan_passes


def cost(lengths, spans, overhead):
    return sum((end - start) * lengths[end - 1] + overhead for start, end in spans)


def all_cuts(n):
    """Every way of cutting n sorted prompts into contiguous passes, as span lists."""
    for k in range(n):
        for cuts in itertools.combinations(range(1, n), k):
            bounds = (0, *cuts, n)
            yield list(zip(bounds[:-1], bounds[1:], strict=True))


def fits(lengths, spans, max_size, max_tokens, max_passes):
    return ((max_passes is None or len(spans) <= max_passes)
            and all(max_size is None or end - start <= max_size for start, end in spans)
            and all(max_tokens is None or end - start == 1 or (end - start) * lengths[end - 1] <= max_tokens
                    for start, end in spans))


@pytest.mark.parametrize("limits", [
    dict(),  # serving without limits
    dict(max_size=3, max_tokens=200),  # serving: prompt and token budgets per pass
    dict(max_passes=2),  # training: at most a few passes
    dict(max_size=4, max_passes=3),
])
def test_plan_is_the_cheapest_feasible_cut(limits):
    rng = np.random.default_rng(5)
    for _ in range(60):
        n = int(rng.integers(1, 10))
        lengths = np.sort(rng.integers(1, 129, n)).tolist()
        overhead = int(rng.choice([0, 16, 64, 500]))
        if "max_passes" in limits and "max_size" in limits and n > limits["max_passes"] * limits["max_size"]:
            with pytest.raises(ValueError, match="do not fit"):
                plan_passes(lengths, overhead, **limits)
            continue
        spans = plan_passes(lengths, overhead, **limits)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))
        check = dict(max_size=None, max_tokens=None, max_passes=None) | limits
        assert fits(lengths, spans, **check)
        best = min(cost(lengths, s, overhead) for s in all_cuts(n) if fits(lengths, s, **check))
        assert cost(lengths, spans, overhead) == best


def test_short_prompts_are_not_padded_to_long_ones_and_ties_take_fewer_passes():
    lengths = sorted([3, 3, 4, 5, 9, 10, 30, 31, 120, 128] * 7)
    spans = plan_passes(lengths, 32, max_size=16, max_tokens=1024)
    assert lengths[spans[0][1] - 1] < 128
    assert plan_passes([10, 11, 12], 64, max_passes=4) == [(0, 3)]  # nothing worth a second pass
    assert plan_passes([10, 20], 10, max_passes=2) == [(0, 2)]  # 40 either way: one pass
    assert plan_passes([], 64) == []


def test_unsorted_lengths_are_refused():
    with pytest.raises(ValueError, match="ascending"):
        plan_passes([5, 3], 8)
