"""The statistics the experiments report: the distribution of one run's values, t intervals over repeats or
traces, a paired bootstrap over repeats and requests."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def dist(values: Sequence[float], scale: float = 1.0) -> dict[str, float] | None:
    """Mean, p50, p90, p99 and max of the finite values (times `scale`); None when there are none."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float) * scale
    if v.size == 0:
        return None
    return {"mean": float(v.mean()), "p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
            "p99": float(np.percentile(v, 99)), "max": float(v.max())}


def t_interval(values: Sequence[float], level: float = 0.95) -> list[float] | None:
    """Student t interval of the mean of per-repeat values; None with fewer than 2."""
    from scipy import stats

    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if v.size < 2:
        return None
    sem = float(stats.sem(v))
    if sem == 0.0:
        return [float(v.mean())] * 2
    lo, hi = stats.t.interval(level, v.size - 1, loc=float(v.mean()), scale=sem)
    return [float(lo), float(hi)]


def bootstrap(stat: Any, mats: dict[str, np.ndarray], draws: int, seed: int, level: float = 0.95) -> list[float] | None:
    """Percentile interval of stat({policy: mean latency}) with repeats and requests resampled, the same
    indices for every policy (pairs by repeat and by request: every policy replayed the same trace)."""
    first = next(iter(mats.values()))
    reps, n = first.shape
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        r = rng.integers(reps, size=reps)
        i = rng.integers(n, size=n)
        means = {k: float(np.nanmean(m[np.ix_(r, i)])) for k, m in mats.items()}
        value = stat(means)
        if math.isfinite(value):
            out.append(value)
    if not out:
        return None
    a = (1 - level) / 2
    return [float(np.quantile(out, a)), float(np.quantile(out, 1 - a))]


def over_traces(values: Sequence[float]) -> dict:
    """The finite values' count, mean and t 95 % interval: one number per trace, pooled over traces."""
    finite = [v for v in values if np.isfinite(v)]
    return {"traces": len(finite), "mean": float(np.mean(finite)) if finite else None, "t_ci": t_interval(finite)}

