"""Ranking metrics (scipy.stats), shared by training-time evaluation and the evaluator."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats


def kendall_tau(scores: Sequence[float], lengths: Sequence[float]) -> float:
    """Kendall's tau-b of predicted scores against true answer lengths (ties handled)."""
    if len(scores) < 2:
        return float("nan")
    return _finite(stats.kendalltau(scores, lengths, variant="b").statistic)


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
