"""The gateway's records (GATEWAY_RECORD_DIR: one JSON line per finished request) as this experiment reads
them: waited for, selected by phase, turned into the ranking quality of the live traffic (Kendall's tau and
the length-weighted tau of the scores against completion_tokens, with bootstrap intervals over requests), and
copied for the loop. Also the gateway's own live gauges."""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pars.eval.rank_metrics import kendall_tau, length_cap, length_weighted_tau

LIVE_GAUGES = ("pars_gateway_live_kendall_tau", "pars_gateway_live_length_weighted_tau")


def read_records(directory: str | Path) -> list[dict[str, Any]]:
    """Every complete record of the directory's *.jsonl files (sorted); a last line still being written is
    left for the next read."""
    out: list[dict[str, Any]] = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        for line in path.read_bytes().splitlines(keepends=True):
            if not line.endswith(b"\n") or not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


def select(records: Iterable[dict], prompts: set[str] | None = None, since: float | None = None,
           until: float | None = None, ranker_id: str | None = None) -> list[dict]:
    """The records of finished (status 200) requests with these prompt texts, arrived in [since, until], scored
    by `ranker_id` (None: any of these conditions not applied)."""
    out = []
    for r in records:
        t = r.get("time")
        if r.get("status") != 200:
            continue
        if prompts is not None and r.get("prompt") not in prompts:
            continue
        if since is not None and not (isinstance(t, int | float) and t >= since):
            continue
        if until is not None and not (isinstance(t, int | float) and t <= until):
            continue
        if ranker_id is not None and r.get("ranker_id") != ranker_id:
            continue
        out.append(r)
    return out


def wait_for(directory: str | Path, pick: Callable[[list[dict]], list[dict]], expected: int, timeout_s: float,
             poll_s: float = 1.0) -> list[dict]:
    """pick(all records) once it holds `expected` records, or whatever it holds after `timeout_s` (the gateway
    writes its records from a queue, so the last ones land shortly after the last answer)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = pick(read_records(directory)) if Path(directory).is_dir() else []
        if len(got) >= expected or time.monotonic() >= deadline:
            return got
        time.sleep(poll_s)


def scored_pairs(records: Iterable[dict]) -> tuple[list[float], list[float]]:
    """(score, completion_tokens) of the records that have both."""
    scores, lengths = [], []
    for r in records:
        s, n = r.get("score"), r.get("completion_tokens")
        if isinstance(s, int | float) and math.isfinite(s) and isinstance(n, int) and not isinstance(n, bool):
            scores.append(float(s))
            lengths.append(float(n))
    return scores, lengths


def _bootstrap(data: tuple, statistic: Callable, n_resamples: int, seed: int) -> list[float] | None:
    from scipy import stats

    if len(data[0]) < 3:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a handful of rows: a degenerate interval, reported as it is
        res = stats.bootstrap(data, statistic, paired=True, vectorized=False, n_resamples=n_resamples,
                              method="percentile", rng=np.random.default_rng(seed))
    # scipy's percentile interval of the same draws, but over the finite ones: a resample whose lengths all tie
    # (a few requests, or many capped at one length) has no tau, and one NaN would make scipy's interval NaN
    draws = np.asarray(res.bootstrap_distribution, dtype=float)
    draws = draws[np.isfinite(draws)]
    if draws.size < n_resamples / 2:
        return None
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


def taus(scores: Sequence[float], lengths: Sequence[float], n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Kendall's tau-b and the length-weighted tau (lengths capped at their 98th percentile, as the judge caps
    them) of scores against lengths, each with a percentile bootstrap 95 % interval over requests
    (scipy.stats.bootstrap, pairs resampled; the cap stays the sample's)."""
    n = len(scores)
    out: dict[str, Any] = {"n": n, "kendall_tau": kendall_tau(scores, lengths), "kendall_tau_ci95": None,
                           "length_weighted_tau": float("nan"), "length_weighted_tau_ci95": None,
                           "length_cap": None, "mean_length": float(np.mean(lengths)) if n else None}
    if n < 2:
        return out
    cap = length_cap(lengths)

    def weighted(s, y):
        return length_weighted_tau(s, y, cap)

    out.update(length_cap=cap, length_weighted_tau=weighted(scores, lengths),
               kendall_tau_ci95=_bootstrap((list(scores), list(lengths)), kendall_tau, n_resamples, seed),
               length_weighted_tau_ci95=_bootstrap((list(scores), list(lengths)), weighted, n_resamples, seed))
    return out


def tau_difference(before: tuple[Sequence[float], Sequence[float]], after: tuple[Sequence[float], Sequence[float]],
                   n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """after - before of both taus on two independent samples of requests (different prompts), with a
    percentile bootstrap 95 % interval: each sample resampled on its own; the length cap is each sample's."""
    rng = np.random.default_rng(seed)
    (s0, y0), (s1, y1) = ((np.asarray(s, float), np.asarray(y, float)) for s, y in (before, after))
    out: dict[str, Any] = {}
    for name, metric in (("kendall_tau", lambda s, y, c: kendall_tau(s, y)),
                         ("length_weighted_tau", length_weighted_tau)):
        if len(s0) < 3 or len(s1) < 3:
            out[name] = {"difference": float("nan"), "ci95": None}
            continue
        c0, c1 = length_cap(y0), length_cap(y1)
        point = metric(s1, y1, c1) - metric(s0, y0, c0)
        draws = []
        for _ in range(n_resamples):
            i, j = rng.integers(len(s0), size=len(s0)), rng.integers(len(s1), size=len(s1))
            d = metric(s1[j], y1[j], c1) - metric(s0[i], y0[i], c0)
            if math.isfinite(d):
                draws.append(d)
        ci = [float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))] if draws else None
        out[name] = {"difference": point, "ci95": ci}
    return out


def paired_trace_taus(old: dict[str, float], new: dict[str, float], lengths: dict[str, int], seed: int = 0
                      ) -> dict[str, Any] | None:
    """Both rankers' tau on the same prompts (a latency trace, scored live by pars-old and pars-new) against
    their true lengths, and new - old with a paired bootstrap interval over prompts; None without two common
    prompts."""
    from pars.eval.rank_metrics import kendall_tau_difference

    common = [p for p in lengths if p in old and p in new]
    if len(common) < 2:
        return None
    y = [lengths[p] for p in common]
    a, b = [old[p] for p in common], [new[p] for p in common]
    return {"prompts": len(common), "pars-old": kendall_tau(a, y), "pars-new": kendall_tau(b, y),
            "difference": kendall_tau_difference(b, a, y, seed=seed)}


def scores_by_prompt(records: Iterable[dict]) -> dict[str, float]:
    """The score each prompt got (its last record's), over records with a prompt and a score."""
    out = {}
    for r in records:
        if isinstance(r.get("prompt"), str) and isinstance(r.get("score"), int | float):
            out[r["prompt"]] = float(r["score"])
    return out


def for_the_loop(records: Iterable[dict], asked: dict[str, int], dest: Path, true_length: bool = True
                 ) -> dict[str, Any]:
    """The records the loop retrains on, copied to dest/records.jsonl. Each request here asked for exactly its
    true answer's length (max_tokens = that length, ignore_eos), so vLLM ends it with finish_reason "length"
    and the gateway marks it censored, which the loop's stage 1 leaves out; but its completion_tokens is its
    true length, not a lower bound. `asked`: each prompt's true length in tokens, for the requests that asked
    for it (not those capped by --max-tokens-cap, which were cut short). With `true_length`, a censored record
    whose completion_tokens is its prompt's true length is copied as uncensored (finish_reason "stop",
    censored false, the original kept as recorded_finish_reason / recorded_censored): what real traffic that
    ended by itself would record. Otherwise the records are copied as recorded."""
    dest.mkdir(parents=True, exist_ok=True)
    counts = {"records": 0, "uncensored_at_true_length": 0, "censored_left": 0}
    with (dest / "records.jsonl").open("w", encoding="utf-8") as f:
        for r in records:
            r = dict(r)
            censored = r.get("censored") is True or r.get("finish_reason") == "length"
            if censored and true_length and r.get("completion_tokens") == asked.get(r.get("prompt")):
                r.update(recorded_finish_reason=r.get("finish_reason"), recorded_censored=r.get("censored"),
                         finish_reason="stop", censored=False)
                counts["uncensored_at_true_length"] += 1
            elif censored:
                counts["censored_left"] += 1
            counts["records"] += 1
            f.write(json.dumps(r) + "\n")
    return counts


def summary(records: Sequence[dict]) -> dict[str, Any]:
    """What a phase's records hold, for the report (the records themselves stay out of the run folder)."""
    def count(key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in records:
            out[str(r.get(key))] = out.get(str(r.get(key)), 0) + 1
        return out

    return {"records": len(records), "by_ranker_id": count("ranker_id"), "by_priority_source": count("priority_source"),
            "by_finish_reason": count("finish_reason"), "censored": sum(r.get("censored") is True for r in records),
            "with_score": sum(isinstance(r.get("score"), int | float) for r in records)}


def parse_live_gauges(metrics_text: str) -> dict[str, float]:
    """The live-quality gauges of a /gateway/metrics answer (Prometheus text), by their full sample name."""
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith(LIVE_GAUGES):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


def live_quality(gateway_url: str) -> dict[str, Any]:
    """The gateway's own live ranking quality: its gauges from /gateway/metrics, and /gateway/health's `live`
    (requests in the window, censored, comparable pairs, both taus) and `recording` (written, dropped).
    The gauges leave out pairs whose length order is unknown (both answers cut at max_tokens), so on traffic
    whose every answer ends at max_tokens, as here, they have no pair and read NaN: this tool's own taus from
    the records count completion_tokens as the true lengths they are here."""
    import httpx

    out: dict[str, Any] = {}
    try:
        out["metrics"] = parse_live_gauges(httpx.get(gateway_url + "/gateway/metrics", timeout=30).text)
        health = httpx.get(gateway_url + "/gateway/health", timeout=30).json()
        out["health"] = {k: health.get(k) for k in ("live", "recording")}
    except (httpx.HTTPError, ValueError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out
