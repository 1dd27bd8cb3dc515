"""Live ranking quality: how well the ranker's scores order the answers the upstream actually gave.

The gateway keeps the last GATEWAY_LIVE_WINDOW finished scored requests (score, completion tokens, censored)
and reports, on /gateway/metrics and /gateway/health:

  kendall_tau          Kendall's tau-b of scores against answer lengths, over the comparable pairs below;
  length_weighted_tau  the same pairs weighted by their length difference (pars.eval.rank_metrics'
                       length_weighted_tau, lengths capped at the window's 98th percentile as in training);
  mean completion tokens per score-quantile bucket (BUCKETS of equal size, lowest scores first): a ranker
                       that works shows them rising.

Censoring. An answer cut at max_tokens (finish_reason "length") is at least its completion_tokens c long, its
true length unknown. A pair with one such answer i is comparable only when its order is still known: the other
answer j uncensored and shorter than c_i (j is the shorter). j uncensored and at least c_i long, or both
censored: the order is unknown and the pair is left out (counting it by the observed lengths would punish a
ranker for predicting an answer long that was cut short). The weight of a censored comparable pair is its
observed difference, a lower bound of the true one. The bucket means count a censored answer at c: a lower
bound too.

The gateway may not import pars.eval (tests/test_layout.py), so the pairs are counted here, O(n^2) with numpy
in row blocks; on uncensored data both numbers equal pars.eval.rank_metrics' (tests/test_gateway_live.py).
They are recomputed only when read (a metrics scrape, a health check) and something changed since, in a worker
thread, from a copy of the window: never per request, never on the event loop. A new ranker (its scores on
another scale) empties the window.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from pars.gateway.outcome import RequestOutcome
from pars.gateway.policy import SCORED

BUCKETS = 4
CAP_PERCENTILE = 98  # as pars.eval.rank_metrics.WEIGHT_CAP_PERCENTILE
_BLOCK_CELLS = 1 << 20  # pairs compared per numpy step: bounds the memory of a large window


@dataclass(frozen=True)
class LiveSnapshot:
    requests: int = 0  # in the window
    censored: int = 0
    pairs: int = 0  # comparable pairs
    kendall_tau: float = math.nan
    length_weighted_tau: float = math.nan
    bucket_mean_tokens: list[float] = field(default_factory=lambda: [math.nan] * BUCKETS)

    def as_json(self) -> dict:
        def finite(x: float) -> float | None:
            return round(x, 6) if math.isfinite(x) else None

        return {"requests": self.requests, "censored": self.censored, "comparable_pairs": self.pairs,
                "kendall_tau": finite(self.kendall_tau), "length_weighted_tau": finite(self.length_weighted_tau),
                "mean_completion_tokens_by_score_bucket": [finite(m) for m in self.bucket_mean_tokens]}


def _cap(lengths: np.ndarray) -> float:
    return float(np.percentile(lengths, CAP_PERCENTILE)) if len(lengths) else math.nan


def rank_quality(scores: Sequence[float], lengths: Sequence[float],
                 censored: Sequence[bool]) -> tuple[float, float, int]:
    """(tau-b, length-weighted tau, comparable pairs) over the pairs whose length order is known (module
    docstring). tau-b = (C - D) / sqrt((C + D + T_score) (C + D + T_length)): C, D concordant and discordant
    pairs, T_score tied in score only, T_length tied in length only; NaN when undefined."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(lengths, dtype=np.float64)
    c = np.asarray(censored, dtype=bool)
    n = len(s)
    if n < 2:
        return math.nan, math.nan, 0
    capped = np.minimum(y, _cap(y))
    concordant = discordant = tied_score = tied_length = pairs = 0
    signed = total = 0.0
    step = max(1, _BLOCK_CELLS // n)
    columns = np.arange(n)
    for start in range(0, n, step):
        rows = slice(start, min(n, start + step))
        ds = np.sign(s[None, :] - s[rows, None])  # pair (i, j): row i, column j
        dy = y[None, :] - y[rows, None]
        later = columns[None, :] > columns[rows, None]  # each pair once
        ci, cj = c[rows, None], c[None, :]
        # uncensored both; or one censored and the other (uncensored) shorter than its observed length
        known = (~ci & ~cj) | (ci & ~cj & (dy < 0)) | (~ci & cj & (dy > 0))
        mask = later & known
        sy = np.sign(dy)
        agree = ds * sy
        concordant += int(np.count_nonzero(mask & (agree > 0)))
        discordant += int(np.count_nonzero(mask & (agree < 0)))
        tied_score += int(np.count_nonzero(mask & (ds == 0) & (sy != 0)))
        tied_length += int(np.count_nonzero(mask & (sy == 0) & (ds != 0)))
        pairs += int(np.count_nonzero(mask))
        weight = np.abs(capped[None, :] - capped[rows, None]) * mask
        signed += float(np.sum(weight * agree))
        total += float(np.sum(weight))
    denominator = math.sqrt((concordant + discordant + tied_score) * (concordant + discordant + tied_length))
    tau = (concordant - discordant) / denominator if denominator > 0 else math.nan
    weighted = signed / total if total > 0 else math.nan
    return tau, weighted, pairs


def bucket_means(scores: Sequence[float], lengths: Sequence[float], buckets: int = BUCKETS) -> list[float]:
    """Mean length in each of `buckets` equal groups of the entries ordered by score (lowest first)."""
    order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")
    y = np.asarray(lengths, dtype=np.float64)[order]
    return [float(part.mean()) if len(part) else math.nan for part in np.array_split(y, buckets)]


def compute(entries: Iterable[tuple[float, int, bool]]) -> LiveSnapshot:
    entries = list(entries)
    if not entries:
        return LiveSnapshot()
    scores, lengths, censored = zip(*entries, strict=True)
    tau, weighted, pairs = rank_quality(scores, lengths, censored)
    return LiveSnapshot(len(entries), sum(censored), pairs, tau, weighted, bucket_means(scores, lengths))


class LiveQuality:
    """The window of finished scored requests of the current ranker, and its cached snapshot."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ranker_id: str | None = None
        self._entries: deque[tuple[float, int, bool]] = deque(maxlen=size)  # (score, completion tokens, censored)
        self._version = 0  # bumped by every change, so a snapshot knows whether it is current
        self._snapshot = (0, LiveSnapshot())

    def add(self, outcome: RequestOutcome) -> None:
        """An outcome consumer: keeps a scored request that finished with a known answer length."""
        tokens = outcome.answer_tokens  # None for n > 1: usage sums the answers
        if (outcome.priority_source != SCORED or outcome.score is None or not math.isfinite(outcome.score)
                or tokens is None or outcome.status != 200 or not outcome.complete
                or outcome.ranker_id != self.ranker_id):  # scored by a ranker since replaced
            return
        self._entries.append((outcome.score, tokens, outcome.censored))
        self._version += 1

    def reset(self, ranker_id: str | None) -> None:
        """Another ranker: its scores are on another scale, the window starts afresh."""
        self.ranker_id = ranker_id
        self._entries.clear()
        self._version += 1

    def __len__(self) -> int:
        return len(self._entries)

    async def refresh(self) -> LiveSnapshot:
        """The snapshot, recomputed (in a worker thread, from a copy) when the window changed since."""
        version, snapshot = self._snapshot
        if version != self._version:
            version, entries = self._version, list(self._entries)
            snapshot = await asyncio.to_thread(compute, entries)
            if version >= self._snapshot[0]:
                self._snapshot = (version, snapshot)
        return snapshot

    def last(self) -> LiveSnapshot:
        """The latest snapshot computed (refresh() first for a current one)."""
        return self._snapshot[1]


class LiveCollector:
    """The snapshot as Prometheus gauges (read from the cache: the metrics endpoint refreshes it first)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.live: LiveQuality | None = None  # None: GATEWAY_LIVE_WINDOW=0, no gauges
        registry.register(self)

    def describe(self) -> list:
        return []  # no samples at registration: the snapshot is read only when scraped

    def collect(self) -> Iterable[GaugeMetricFamily]:
        if self.live is None:
            return
        snap = self.live.last()
        window = "over the last finished scored requests of the current ranker (GATEWAY_LIVE_WINDOW)"
        yield GaugeMetricFamily("pars_gateway_live_kendall_tau", "Kendall's tau-b of scores against completion "
                                f"tokens, censored pairs left out, {window}", value=snap.kendall_tau)
        yield GaugeMetricFamily("pars_gateway_live_length_weighted_tau", "length-weighted tau of scores against "
                                f"completion tokens, {window}", value=snap.length_weighted_tau)
        yield GaugeMetricFamily("pars_gateway_live_requests", f"requests {window}", value=snap.requests)
        yield GaugeMetricFamily("pars_gateway_live_censored_requests", "of those, answers cut at max_tokens",
                                value=snap.censored)
        yield GaugeMetricFamily("pars_gateway_live_comparable_pairs", "pairs whose length order is known",
                                value=snap.pairs)
        means = GaugeMetricFamily("pars_gateway_live_completion_tokens_mean", "mean completion tokens by score "
                                  f"quantile bucket (1: lowest scores; {BUCKETS} equal buckets), {window}",
                                  labels=["bucket"])
        for i, mean in enumerate(snap.bucket_mean_tokens, start=1):
            means.add_metric([str(i)], mean)
        yield means
