"""Cutting length-sorted prompts into forward passes that waste the least compute on padding.

One rule for training (pars/pairdata.py: a batch's distinct prompts) and serving (pars/serving/batcher.py:
the prompts a dynamic batch gathered): a pass pads every prompt to its longest, and each pass also costs a
fixed `overhead` in padded-token equivalents (small matrix products run less efficiently), so a batch is cut
only where the cut saves more padding than the extra pass costs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plan_passes(lengths: Sequence[int] | np.ndarray, overhead: float, max_size: int | None = None,
                max_tokens: int | None = None, max_passes: int | None = None) -> list[tuple[int, int]]:
    """Cut prompts sorted by ascending token length into contiguous passes [start, end) that minimise
    padded tokens + `overhead` per pass. Limits: at most `max_size` prompts and `max_tokens` padded tokens
    per pass (a single prompt always fits), at most `max_passes` passes. Exact, by dynamic programming; on
    a tie under a pass limit, the fewest passes. Returns [] for no prompts."""
    ordered = np.asarray(lengths, dtype=np.int64)
    n = len(ordered)
    if n == 0:
        return []
    if np.any(ordered[1:] < ordered[:-1]):
        raise ValueError("plan_passes needs lengths sorted in ascending order")
    if max_passes is not None and max_passes < 1:
        raise ValueError(f"max_passes must be at least 1, got {max_passes}")
    lowest = [max(0, e - max_size) if max_size else 0 for e in range(n + 1)]

    def extend(prev: np.ndarray, cur: np.ndarray, cut: np.ndarray) -> None:
        # cur[e]: cheapest cost of the first e prompts whose last pass is s..e-1, on top of prev[s].
        # With prev is cur (no pass limit), prev[s] for s < e is final by the time e is reached.
        for e in range(1, n + 1):
            starts = np.arange(lowest[e], e)
            sizes = e - starts
            padded = sizes * ordered[e - 1]
            total = prev[starts] + padded + overhead
            if max_tokens is not None:
                total[(sizes > 1) & (padded > max_tokens)] = np.inf
            best = int(np.argmin(total))
            cur[e], cut[e] = total[best], starts[best]

    if max_passes is None:  # one table: the best cost of e prompts over any number of passes
        cost = np.full(n + 1, np.inf)
        cost[0] = 0.0
        cut = np.zeros(n + 1, dtype=np.int64)
        extend(cost, cost, cut)
        spans, end = [], n
        while end > 0:
            spans.append((int(cut[end]), end))
            end = int(cut[end])
        return spans[::-1]

    # One table per pass count: cost[k][e] is the best cost of e prompts in exactly k+1 passes.
    layers = min(max_passes, n)
    cost = np.full((layers, n + 1), np.inf)
    cut = np.zeros((layers, n + 1), dtype=np.int64)
    start = np.full(n + 1, np.inf)
    start[0] = 0.0
    extend(start, cost[0], cut[0])
    for k in range(1, layers):
        extend(cost[k - 1], cost[k], cut[k])
    if not np.isfinite(cost[:, n]).any():
        raise ValueError(f"{n} prompts do not fit in {max_passes} passes of at most {max_size} prompts")
    k = int(np.argmin(cost[:, n]))  # argmin takes the fewest passes on a tie
    spans, end = [], n
    while k >= 0:
        spans.append((int(cut[k, end]), end))
        end = int(cut[k, end])
        k -= 1
    assert end == 0
    return spans[::-1]
