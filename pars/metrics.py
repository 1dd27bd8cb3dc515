"""Ranking metrics (scipy.stats), shared by training-time evaluation and the evaluator."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats


def kendall_tau(scores: Sequence[float], lengths: Sequence[float]) -> float:
    """Kendall's tau-b of predicted scores against true answer lengths (ties handled)."""
    if len(scores) < 2:
        return float("nan")
    return _finite(stats.kendalltau(scores, lengths, variant="b").statistic)


def kendall_tau_difference(
    scores: Sequence[float], baseline: Sequence[float], lengths: Sequence[float],
    n_resamples: int = 1000, seed: int = 0,
) -> dict[str, float]:
    """tau(scores) - tau(baseline) on the same rows, with a paired bootstrap 95 % interval over rows
    (scipy.stats.bootstrap): whether a scorer beats a baseline by more than the sampling noise."""
    def diff(a, b, y):
        return kendall_tau(a, y) - kendall_tau(b, y)

    point = diff(scores, baseline, lengths)
    if len(scores) < 3 or not math.isfinite(point):
        return {"difference": point, "ci95_low": float("nan"), "ci95_high": float("nan")}
    with warnings.catch_warnings():
        # A handful of rows can make every resample alike; the interval then collapses or is NaN.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        res = stats.bootstrap((list(scores), list(baseline), list(lengths)), diff, paired=True,
                              vectorized=False, n_resamples=n_resamples, method="percentile",
                              rng=np.random.default_rng(seed))
    return {"difference": point, "ci95_low": _finite(res.confidence_interval.low),
            "ci95_high": _finite(res.confidence_interval.high)}


def spearman_rho(scores: Sequence[float], lengths: Sequence[float]) -> float:
    if len(scores) < 2:
        return float("nan")
    return _finite(stats.spearmanr(scores, lengths).statistic)


def pairwise_accuracy(scores_a: Sequence[float], scores_b: Sequence[float], labels: Sequence[int]) -> float:
    """Share of pairs where (score_A > score_B) matches label (1 = A longer), as the original counts."""
    if not labels:
        return float("nan")
    correct = sum(int(a > b) == int(y) for a, b, y in zip(scores_a, scores_b, labels, strict=True))
    return correct / len(labels)


def _finite(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else float("nan")
