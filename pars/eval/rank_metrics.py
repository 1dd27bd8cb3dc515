"""Ranking metrics (scipy.stats), shared by training-time evaluation and the evaluator."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

# Lengths over this percentile of a set's are capped for length-weighted ranking (the metric, and the loss
# weights of --pair-weighting length-diff), so that a few very long answers do not decide it.
WEIGHT_CAP_PERCENTILE = 98


def kendall_tau(scores: Sequence[float], lengths: Sequence[float]) -> float:
    """Kendall's tau-b of predicted scores against true answer lengths (ties handled)."""
    if len(scores) < 2:
        return float("nan")
    return _finite(stats.kendalltau(scores, lengths, variant="b").statistic)


def kendall_tau_difference(
    scores: Sequence[float], baseline: Sequence[float], lengths: Sequence[float],
    n_resamples: int = 1000, seed: int = 0, metric: Callable[[Sequence[float], Sequence[float]], float] | None = None,
) -> dict[str, float]:
    """tau(scores) - tau(baseline) on the same rows (or another `metric`'s difference), with a paired bootstrap
    95 % interval over rows (scipy.stats.bootstrap): whether a scorer beats a baseline by more than the
    sampling noise."""
    metric = metric or kendall_tau

    def diff(a, b, y):
        return metric(a, y) - metric(b, y)

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


def length_weighted_tau(scores: Sequence[float], lengths: Sequence[float], cap: float | None = None) -> float:
    """Concordance of scores with lengths where each pair counts by its length difference (lengths capped at
    `cap`): +|la - lb| when the longer one scores higher, -|la - lb| when it scores lower, 0 for a score tie,
    over the sum of |la - lb|. 1 is the true order, 0 a random one.

    Why this and not only tau: when jobs wait together, putting a longer job before a shorter one costs the
    shorter one the whole difference in service time, so an order's excess total wait over shortest-first
    is the sum of its discordant pairs' differences, and this is 1 - 2 * that / (sum of every pair's)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(lengths, dtype=np.float64)
    if cap is not None:
        y = np.minimum(y, cap)
    if len(s) < 2:
        return float("nan")
    signed = total = 0.0
    step = max(1, 2**22 // len(s))  # blocks of rows against all rows: every pair twice, which the ratio drops
    for start in range(0, len(s), step):
        dy = y[None, :] - y[start : start + step, None]
        signed += float(np.sum(dy * np.sign(s[None, :] - s[start : start + step, None])))
        total += float(np.abs(dy).sum())
    return signed / total if total > 0 else float("nan")


def length_cap(lengths: Sequence[float]) -> float:
    """Where lengths are capped for length-weighted ranking: their WEIGHT_CAP_PERCENTILE-th percentile."""
    return float(np.percentile(lengths, WEIGHT_CAP_PERCENTILE)) if len(lengths) else float("nan")


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
