"""Cutting length-sorted prompts into forward passes that waste the least compute on padding.

One rule for training (pars/train/pairdata.py: a batch's distinct prompts) and serving (pars/serving/batcher.py:
the prompts a dynamic batch gathered): a pass pads every prompt to its longest, and each pass also costs a
fixed `overhead` in padded-token equivalents (small matrix products run less efficiently), so a batch is cut
only where the cut saves more padding than the extra pass costs.
"""

from __future__ import annotations

import math
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
    if max_passes is None:
        return _plan_any_number(ordered.tolist(), overhead, max_size, max_tokens)
    return _plan_at_most(ordered, overhead, max_size, max_tokens, max_passes)


def _plan_any_number(ordered: list[int], overhead: float, max_size: int | None,
                     max_tokens: int | None) -> list[tuple[int, int]]:
    # cost[e]: cheapest cut of the first e prompts; the last pass s..e-1 costs (e - s) * ordered[e-1] +
    # overhead. Each cost[e] needs every cost[s < e] first, so this is a loop; in plain Python, since
    # serving plans a few prompts per round, where numpy's per-call cost would dominate.
    n = len(ordered)
    cost = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for e in range(1, n + 1):
        longest = ordered[e - 1]
        for start in range(max(0, e - max_size) if max_size else 0, e):  # ascending: ties keep fewer passes
            size = e - start
            padded = size * longest
            if size > 1 and max_tokens is not None and padded > max_tokens:
                continue
            total = cost[start] + padded + overhead
            if total < cost[e]:
                cost[e], cut[e] = total, start
    spans, end = [], n
    while end > 0:
        spans.append((cut[end], end))
        end = cut[end]
    return spans[::-1]


def _plan_at_most(ordered: np.ndarray, overhead: float, max_size: int | None, max_tokens: int | None,
                  max_passes: int) -> list[tuple[int, int]]:
    # cost[k][e]: cheapest cut of the first e prompts into exactly k+1 passes. Layer k depends only on
    # layer k-1, so each layer is one array operation over every (start, end) pair: training plans a whole
    # batch's prompts (hundreds) at every step.
    n = len(ordered)
    sizes = np.arange(n + 1)[None, :] - np.arange(n + 1)[:, None]  # [start, end]: prompts in the pass
    padded = sizes * np.concatenate([[0], ordered])[None, :]
    allowed = sizes >= 1
    if max_size:
        allowed &= sizes <= max_size
    if max_tokens is not None:
        allowed &= (sizes == 1) | (padded <= max_tokens)
    step = np.where(allowed, padded + overhead, np.inf)
    layers = min(max_passes, n)
    cost = np.full((layers, n + 1), np.inf)
    cut = np.zeros((layers, n + 1), dtype=np.int64)
    prev = np.full(n + 1, np.inf)
    prev[0] = 0.0
    for k in range(layers):
        total = prev[:, None] + step
        cut[k] = np.argmin(total, axis=0)  # the first minimum: the smallest start
        cost[k] = total[cut[k], np.arange(n + 1)]
        prev = cost[k]
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
