"""Each run judged on the val set: its checkpoint's scores of every val row (cached beside the run), Kendall's tau,
the length-weighted tau and the pairwise accuracy on the val pairs at δ = 0.2; and the paired bootstrap.

The bootstrap resamples val rows (for the taus) and val pairs (for the accuracy) with one seeded stream, so every
run sees the same resamples: a cell's statistic in a resample is the mean over its seeds of each run's, and the
difference of two cells in a resample is paired by construction. Each run's resampled values are cached too
(boot_*.json), which makes a report of any pair of cells cost nothing once its runs are scored.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.loss_ablation.grid import VAL_DELTA, pair_file
from pars.common.jsonio import read_json, write_json_atomic
from pars.eval.rank_metrics import kendall_tau, length_cap, length_weighted_tau

METRICS = ("kendall_tau", "length_weighted_tau", "pairwise_accuracy")
LEVEL = 0.95


def sha(values: Any) -> str:
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:16]


@dataclass
class ValSet:
    """A unit's val rows and val pairs (at VAL_DELTA), the pairs as indices into the rows."""

    prompts: list[str]
    ids: list[str]
    lengths: np.ndarray
    cap: float
    pair_a: np.ndarray
    pair_b: np.ndarray
    labels: np.ndarray
    sha: str

    @classmethod
    def load(cls, unit_dir: Path) -> ValSet:
        from experiments.loss_ablation.data import row_ids, val_rows
        from pars.data.readers import load_pairs

        rows = val_rows(unit_dir)
        prompts = [r["prompt"] for r in rows]
        index: dict[str, int] = {}
        for i, p in enumerate(prompts):
            index.setdefault(p, i)  # a repeated prompt scores the same wherever it is
        pairs = load_pairs(pair_file(unit_dir, "val", VAL_DELTA), "val pairs")
        lengths = np.asarray([float(r["answer_length"]) for r in rows])
        return cls(prompts, row_ids(rows), lengths, length_cap(lengths),
                   np.asarray([index[p["prompt_A"]] for p in pairs], dtype=np.int64),
                   np.asarray([index[p["prompt_B"]] for p in pairs], dtype=np.int64),
                   np.asarray([int(p["label"]) for p in pairs], dtype=np.int64),
                   sha([prompts, lengths.tolist(), [p["label"] for p in pairs]]))


def weighted_tau(scores: np.ndarray, lengths: np.ndarray, cap: float | None = None) -> float:
    """pars.eval.rank_metrics.length_weighted_tau in O(n log n) (the same value; a test keeps them equal):
    for each row, the rows scored strictly lower count +(its length - theirs); over all pairs' |differences|."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(lengths, dtype=np.float64)
    if cap is not None:
        y = np.minimum(y, cap)
    n = len(s)
    if n < 2:
        return float("nan")
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    below = np.searchsorted(s_sorted, s_sorted, side="left")  # rows scored strictly lower
    prefix = np.concatenate([[0.0], np.cumsum(y_sorted)])
    signed = float(np.sum(below * y_sorted - prefix[below]))
    ys = np.sort(y)
    total = float(np.sum(ys * (2 * np.arange(n) - n + 1)))
    return signed / total if total > 0 else float("nan")


def point(scores: np.ndarray, val: ValSet) -> dict[str, float]:
    """The run's three metrics on the whole val set."""
    correct = (scores[val.pair_a] > scores[val.pair_b]).astype(np.int64) == val.labels
    return {"kendall_tau": kendall_tau(scores, val.lengths),
            "length_weighted_tau": length_weighted_tau(scores, val.lengths, cap=val.cap),
            "pairwise_accuracy": float(correct.mean()) if len(correct) else float("nan")}


def resample_draws(scores: np.ndarray, val: ValSet, draws: int, seed: int) -> dict[str, np.ndarray]:
    """The three metrics in each of `draws` resamples: val rows drawn with replacement by default_rng(seed) for the
    taus, val pairs by default_rng(seed + 1) for the accuracy; the same resamples for every run."""
    n, m = len(scores), len(val.labels)
    rows = np.random.default_rng(seed)
    taus, weighted = np.empty(draws), np.empty(draws)
    for d in range(draws):
        idx = rows.integers(n, size=n)
        taus[d] = kendall_tau(scores[idx], val.lengths[idx])
        weighted[d] = weighted_tau(scores[idx], val.lengths[idx], val.cap)
    correct = ((scores[val.pair_a] > scores[val.pair_b]).astype(np.int64) == val.labels).astype(np.float64)
    pairs = np.random.default_rng(seed + 1)
    acc = np.array([correct[pairs.integers(m, size=m)].mean() if m else math.nan for _ in range(draws)])
    return {"kendall_tau": taus, "length_weighted_tau": weighted, "pairwise_accuracy": acc}


def score_run(run_dir: Path, which: str, val: ValSet, extra: Sequence[str], batch_size: int = 64,
              scorer_factory: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """{"val": scores of the val rows in order, "extra": {prompt: score}} of the run's `which`_model.pt, from
    scores_<which>.json when it holds them (for this checkpoint and val set), else scored now and cached."""
    cache = run_dir / f"scores_{which}.json"
    ckpt = run_dir / f"{which}_model.pt"
    stamp = None
    if ckpt.is_file():
        st = ckpt.stat()
        stamp = [st.st_size, st.st_mtime_ns]
    cached = read_json(cache, cache.name) if cache.is_file() else None
    if not (cached and cached.get("val_sha") == val.sha and (stamp is None or cached.get("checkpoint") == stamp)):
        cached = None
    known = set(val.prompts) | set(cached["extra"] if cached else ())
    want = [p for p in dict.fromkeys(extra) if p not in known]
    if cached is not None and not want:
        return cached
    if stamp is None:
        raise SystemExit(f"{ckpt}: no checkpoint, and no scores cached for this val set")
    scorer = (scorer_factory or default_scorer)(str(ckpt))
    if cached is None:
        cached = {"checkpoint": stamp, "val_sha": val.sha, "extra": {},
                  "val": scorer.score_many(val.prompts, batch_size=batch_size)}
    cached["extra"].update(zip(want, scorer.score_many(want, batch_size=batch_size) if want else [], strict=True))
    write_json_atomic(cached, cache, indent=None)
    return cached


def default_scorer(checkpoint: str) -> Any:
    from pars.model.scoring import PromptScorer

    return PromptScorer.from_checkpoint(checkpoint, device="cpu")


def run_draws(run_dir: Path, which: str, scores: Sequence[float], val: ValSet, draws: int,
              seed: int) -> dict[str, np.ndarray]:
    """resample_draws of a run, cached in boot_<which>_<draws>_<seed>.json (keyed by its scores)."""
    cache = run_dir / f"boot_{which}_{draws}_{seed}.json"
    key = sha([val.sha, list(scores)])
    if cache.is_file():
        got = read_json(cache, cache.name)
        if got.get("key") == key:
            return {m: np.asarray(got[m], dtype=np.float64) for m in METRICS}
    out = resample_draws(np.asarray(scores, dtype=np.float64), val, draws, seed)
    write_json_atomic({"key": key, **{m: [None if not math.isfinite(x) else x for x in v.tolist()]
                                      for m, v in out.items()}}, cache, indent=None)
    return out


def seeds_summary(points: Sequence[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per metric: the mean over the seeds' values, their sd (n - 1) and range, and each."""
    out = {}
    for m in METRICS:
        v = np.asarray([p[m] for p in points], dtype=np.float64)
        out[m] = {"mean": float(np.mean(v)) if len(v) else None,
                  "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None,
                  "min": float(np.min(v)) if len(v) else None, "max": float(np.max(v)) if len(v) else None,
                  "per_seed": v.tolist()}
    return out


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def difference(a_points: Sequence[dict], a_draws: Sequence[dict], b_points: Sequence[dict],
               b_draws: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """Cell a - cell b per metric: the difference of the means over seeds, and its paired bootstrap 95 % interval
    (each resample: mean over a's seeds - mean over b's seeds, the same resample for both)."""
    out = {}
    for m in METRICS:
        diff = (np.mean([p[m] for p in a_points]) - np.mean([p[m] for p in b_points]))
        boot = np.mean([d[m] for d in a_draws], axis=0) - np.mean([d[m] for d in b_draws], axis=0)
        boot = boot[np.isfinite(boot)]
        ci = ([float(np.quantile(boot, (1 - LEVEL) / 2)), float(np.quantile(boot, 1 - (1 - LEVEL) / 2))]
              if boot.size else None)
        out[m] = {"difference": _finite(diff), "ci95": ci, "draws": int(boot.size)}
    return out


def seeds_above(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]]) -> dict[str, list[int]]:
    """Per metric [k, n]: in k of the n seeds both cells ran, cell a's run scored above cell b's run of the same
    seed (for in-batch cells, the same batches in the same order). The bootstrap resamples val rows only, with
    the seeds fixed: this says whether a difference is the same in every seed."""
    common = sorted(set(a) & set(b))
    return {m: [sum(a[s][m] > b[s][m] for s in common), len(common)] for m in METRICS}


def verdict(ci: Sequence[float] | None) -> str:
    """A claim 'a beats b' from the interval of a - b."""
    if not ci:
        return "not settled (no interval)"
    if ci[0] > 0:
        return "holds"
    if ci[1] < 0:
        return "does not hold"
    return "not settled (interval includes 0)"
