"""The numbers of an experiment, from its runs alone (so that --report-from can redo them): each run's
summary, and per (rate, policy) the means over repeats, the ratios to fcfs with t and bootstrap intervals, the
share of the oracle's gain recovered, and issue 6's targets."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.lib.stats import bootstrap, dist, t_interval
from experiments.lib.traces import Request
from experiments.vllm_e2e.client import Result
from experiments.vllm_e2e.policies import BASELINE, ORACLE, pars_window


def summarize_run(results: Sequence[Result], trace: Sequence[Request], makespan: float, stream: bool) -> dict:
    ok = [r for r in results if r.latency_s is not None]
    scores = [r.score_ms for r in results if r.score_ms is not None]
    return {
        "n": len(results), "errors": len(results) - len(ok),
        "error_examples": sorted({r.error for r in results if r.error})[:3],
        "latency_s": dist([r.latency_s for r in ok]),
        "per_token_ms": dist([r.latency_s / trace[r.index].max_tokens for r in ok], 1000.0),
        "ttft_s": dist([r.ttft_s for r in ok]) if stream else None,
        "ttft_note": None if stream else "not measured: non-streaming requests (use --stream)",
        "throughput_rps": len(ok) / makespan, "output_tokens_per_s": sum(trace[r.index].max_tokens for r in ok)
        / makespan, "makespan_s": makespan,
        "tokens_mismatch": sum(1 for r in ok if r.completion_tokens is not None
                               and r.completion_tokens != trace[r.index].max_tokens),
        "send_lag_ms": dist([r.lag_ms for r in results]),
        "score_ms": dist(scores) if scores else None,
        "priority_sources": dict(Counter(r.source for r in results if r.source)),
    }


def latency_matrix(runs: Sequence[dict], policy: str, rate: float, n: int) -> np.ndarray:
    """repeats x requests latencies (NaN for failed requests), repeats in order."""
    cells = sorted((r for r in runs if r["policy"] == policy and r["rate"] == rate), key=lambda r: r["repeat"])
    m = np.full((len(cells), n), np.nan)
    for k, cell in enumerate(cells):
        for req in cell["requests"]:
            if req["latency_s"] is not None:
                m[k, req["i"]] = req["latency_s"]
    return m


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def _frac(f: float, p: float, o: float) -> float:
    """Share of the oracle's gain over fcfs that p recovers: 1 = as good as the oracle, 0 = no better than fcfs."""
    return (f - p) / (f - o) if f - o > 0 else float("nan")


def compare(runs: Sequence[dict], policies: Sequence[str], rates: Sequence[float], n: int, draws: int,
            seed: int) -> list[dict]:
    """Per (rate, policy): means over repeats and ratios to fcfs with their intervals."""
    out = []
    for rate in rates:
        cells = {p: sorted((r for r in runs if r["policy"] == p and r["rate"] == rate), key=lambda r: r["repeat"])
                 for p in policies}
        mats = {p: latency_matrix(runs, p, rate, n) for p in policies}
        base = [c["summary"]["latency_s"]["mean"] if c["summary"]["latency_s"] else float("nan")
                for c in cells.get(BASELINE, [])]
        orac = [c["summary"]["latency_s"]["mean"] if c["summary"]["latency_s"] else float("nan")
                for c in cells.get(ORACLE, [])]
        for p in policies:
            cs = cells[p]
            if not cs:
                continue

            def metric(path: tuple[str, str], cs: list[dict] = cs) -> list[float]:
                vals = []
                for c in cs:
                    d = c["summary"][path[0]]
                    vals.append(d[path[1]] if d else float("nan"))
                return vals

            means = metric(("latency_s", "mean"))
            row: dict[str, Any] = {
                "rate": rate, "policy": p, "repeats": len(cs),
                "errors": sum(c["summary"]["errors"] for c in cs),
                "latency_mean_s": float(np.nanmean(means)), "latency_mean_ci": t_interval(means),
                "latency_p50_s": float(np.nanmean(metric(("latency_s", "p50")))),
                "latency_p90_s": float(np.nanmean(metric(("latency_s", "p90")))),
                "latency_p99_s": float(np.nanmean(metric(("latency_s", "p99")))),
                "per_token_mean_ms": float(np.nanmean(metric(("per_token_ms", "mean")))),
                "per_token_p50_ms": float(np.nanmean(metric(("per_token_ms", "p50")))),
                "per_token_p99_ms": float(np.nanmean(metric(("per_token_ms", "p99")))),
                "ttft_p50_s": (float(np.nanmean(metric(("ttft_s", "p50"))))
                               if cs[0]["summary"]["ttft_s"] else None),
                # the wait before the first token is where starvation shows: a long answer's own decode time
                # dominates its end-to-end latency, not its time in the queue
                "ttft_p99_s": (float(np.nanmean(metric(("ttft_s", "p99"))))
                               if cs[0]["summary"]["ttft_s"] else None),
                "ttft_max_s": (float(np.nanmean(metric(("ttft_s", "max"))))
                               if cs[0]["summary"]["ttft_s"] else None),
                "throughput_rps": float(np.mean([c["summary"]["throughput_rps"] for c in cs])),
                "score_ms_p50": (float(np.nanmean(metric(("score_ms", "p50"))))
                                 if cs[0]["summary"]["score_ms"] else None),
                "send_lag_p99_ms": float(np.nanmax(metric(("send_lag_ms", "p99")))),
                "fallbacks": sum(c.get("fallbacks") or 0 for c in cs),
            }
            k = min(len(base), len(means))
            if p != BASELINE and k:
                ratios = [_ratio(means[j], base[j]) for j in range(k)]  # paired: same repeat
                p99s = metric(("latency_s", "p99"))
                bp99 = [c["summary"]["latency_s"]["p99"] if c["summary"]["latency_s"] else float("nan")
                        for c in cells[BASELINE]]
                row["ratio_mean"] = {"per_repeat": ratios, "mean": float(np.nanmean(ratios)),
                                     "t_ci": t_interval(ratios),
                                     "bootstrap_ci": bootstrap(lambda m, p=p: _ratio(m[p], m[BASELINE]),
                                                               {p: mats[p], BASELINE: mats[BASELINE]}, draws, seed)}
                row["ratio_p99"] = {"per_repeat": [_ratio(p99s[j], bp99[j]) for j in range(k)],
                                    "mean": float(np.nanmean([_ratio(p99s[j], bp99[j]) for j in range(k)]))}
                gains = [1 - x for x in ratios]
                row["gain"] = {"mean": float(np.nanmean(gains)), "t_ci": t_interval(gains),
                               "note": "1 - mean latency / fcfs's; > 0 is better than fcfs"}
                if p != ORACLE and orac:
                    j = min(k, len(orac))
                    fr = [_frac(base[x], means[x], orac[x]) for x in range(j)]
                    row["oracle_gain_recovered"] = {
                        "per_repeat": fr, "mean": float(np.nanmean(fr)) if any(map(math.isfinite, fr)) else None,
                        "t_ci": t_interval(fr),
                        "bootstrap_ci": bootstrap(lambda m, p=p: _frac(m[BASELINE], m[p], m[ORACLE]),
                                                  {p: mats[p], BASELINE: mats[BASELINE], ORACLE: mats[ORACLE]},
                                                  draws, seed)}
            out.append(row)
    return out


def tradeoff(rows: Sequence[dict], rate: float) -> list[dict]:
    """The starvation guard's knob at one rate: for each pars@W its mean and p99 ratios to fcfs, and the share
    of the largest W's gain it keeps (issue 6: p99 within 1.2x of fcfs's, at least half the gain kept)."""
    pars = sorted(((pars_window(r["policy"]), r) for r in rows
                   if r["rate"] == rate and pars_window(r["policy"]) and "ratio_mean" in r),
                  key=lambda kr: (kr[0][0] or "", kr[0][1]))  # by ranker, then W
    fcfs = next((r for r in rows if r["rate"] == rate and r["policy"] == BASELINE), {})
    base_ttft99 = fcfs.get("ttft_p99_s")
    top_gain = {ranker: r["gain"]["mean"] for (ranker, _), r in pars}  # each ranker's largest W
    return [{"window_s": w, "ranker": ranker, "ratio_mean": r["ratio_mean"]["mean"],
             "ratio_mean_t_ci": r["ratio_mean"]["t_ci"], "ratio_p99": r["ratio_p99"]["mean"],
             "ratio_ttft_p99": (r["ttft_p99_s"] / base_ttft99 if base_ttft99 and r.get("ttft_p99_s") is not None
                                else None),
             "gain_kept_vs_largest_w": r["gain"]["mean"] / top_gain[ranker] if top_gain[ranker] > 0 else None,
             "p99_within_1_2x": r["ratio_p99"]["mean"] <= 1.2,
             "oracle_gain_recovered": (r.get("oracle_gain_recovered") or {}).get("mean")} for (ranker, w), r in pars]


def analyse(runs: Sequence[dict], names: Sequence[str], rates: Sequence[float], n: int, draws: int, seed: int,
            probe_result: dict | None) -> tuple[list[dict], dict]:
    """The summary rows and issue 6's targets, from the runs alone (so --report-from can redo them)."""
    rows_out = compare(runs, names, rates, n, draws, seed)
    top = max(rates)
    top_rows = {r["policy"]: r for r in rows_out if r["rate"] == top}
    targets = {"note": "computed from this run's numbers; issue 6's targets", "rate": top,
               "pars_oracle_gain_recovered": {p: r.get("oracle_gain_recovered") for p, r in top_rows.items()
                                              if pars_window(p)},
               "guard_tradeoff": tradeoff(rows_out, top),
               "gateway_own_overhead_p50_ms": ({k: v["overhead_p50_ms"] for k, v in probe_result.items()
                                                if isinstance(v, dict) and "overhead_p50_ms" in v}
                                               if probe_result else None)}
    return rows_out, targets
