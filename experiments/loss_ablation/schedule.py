"""Scheduling value: what a cell's scores buy in experiments/lib/scheduler's model of vLLM's priority scheduler, as
experiments/sched_sim.py measures it: the share of the oracle's mean-latency gain over FCFS that the gateway's
priority rule with these scores recovers, (fcfs - pars) / (fcfs - oracle), per trace and load factor.

Traces: --traces seeded draws of --num-requests val rows (shuffled by the trace's seed and taken in order, rows that
do not fit --max-model-len left out, as experiments/lib/traces.build_trace draws them), each request serving its
answer's tokens capped at --max-tokens-cap; Poisson arrivals at load factor x capacity, all from the trace's seed.
Every run meets the same traces, so cells compare trace by trace.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.lib.scheduler import STEP_BASE_MS, STEP_PER_SEQ_MS, full_batch_tokens_per_s, simulate
from experiments.lib.stats import over_traces
from experiments.lib.traces import arrivals_at, unit_gaps
from experiments.sched_sim import policy_priorities, quantiles
from pars.common.jsonio import read_json, write_json_atomic

DEFAULT_LOAD_FACTORS = (0.8, 1.0, 1.2, 1.5, 2.0)  # sched_sim's
DEFAULT_WINDOWS = (5.0, 20.0, 60.0, 1000.0)  # sched_sim's


@dataclass(frozen=True)
class SchedSettings:
    num_requests: int = 80
    traces: int = 30
    load_factors: tuple[float, ...] = DEFAULT_LOAD_FACTORS
    windows: tuple[float, ...] = DEFAULT_WINDOWS
    max_num_seqs: int = 8
    max_tokens_cap: int = 1024
    max_model_len: int = 2048
    step_base_ms: float = STEP_BASE_MS
    step_per_seq_ms: float = STEP_PER_SEQ_MS


@dataclass
class Trace:
    seed: int
    ids: list[str]
    prompt_tokens: list[int]
    max_tokens: list[int]


def draw_traces(served: dict[str, list[int]], usable: set[str], s: SchedSettings) -> list[Trace]:
    """s.traces traces over the served rows whose ids every unit has (`usable`); SystemExit when too few rows."""
    rows = [(i, p, a) for i, (p, a) in served.items() if i in usable]
    traces = []
    for seed in range(s.traces):
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        ids, prompt, tokens = [], [], []
        for k in order:
            if len(ids) == s.num_requests:
                break
            i, p, a = rows[k]
            m = max(1, min(s.max_tokens_cap, a))
            if p + m > s.max_model_len:
                continue
            ids.append(i)
            prompt.append(p)
            tokens.append(m)
        if len(ids) < s.num_requests:
            raise SystemExit(f"only {len(ids)} usable val rows for --num-requests {s.num_requests}")
        traces.append(Trace(seed, ids, prompt, tokens))
    return traces


def _arrivals(trace: Trace, lf: float, s: SchedSettings) -> list[float]:
    capacity = full_batch_tokens_per_s(s.max_num_seqs, s.step_base_ms, s.step_per_seq_ms) / float(
        np.mean(trace.max_tokens))
    return arrivals_at(unit_gaps(len(trace.ids), trace.seed), lf * capacity)


def _mean_latency(trace: Trace, arrivals: list[float], priorities: Sequence[float], s: SchedSettings) -> float:
    return float(simulate(arrivals, trace.max_tokens, trace.prompt_tokens, priorities, s.max_num_seqs,
                          s.step_base_ms, s.step_per_seq_ms, 0.0).mean())


def baselines(traces: Sequence[Trace], s: SchedSettings) -> dict[str, dict[str, list[float]]]:
    """{load factor: {"fcfs": per-trace mean latency, "oracle": ...}}: the same for every run."""
    out: dict[str, dict[str, list[float]]] = {}
    for lf in s.load_factors:
        out[f"{lf:g}"] = {p: [] for p in ("fcfs", "oracle")}
        for t in traces:
            arrivals = _arrivals(t, lf, s)
            fields = {"max_tokens": t.max_tokens, "prompt_tokens": t.prompt_tokens}
            for p in ("fcfs", "oracle"):
                out[f"{lf:g}"][p].append(_mean_latency(t, arrivals, policy_priorities(p, arrivals, fields, []), s))
    return out


def recovery(scores: dict[str, float], traces: Sequence[Trace], base: dict, s: SchedSettings) -> dict[str, Any]:
    """{window: {load factor: per-trace recovery}} of one run's scores (None where the oracle gains nothing)."""
    out: dict[str, dict[str, list[float | None]]] = {f"{w:g}": {} for w in s.windows}
    for lf in s.load_factors:
        for w in s.windows:
            out[f"{w:g}"][f"{lf:g}"] = []
        for k, t in enumerate(traces):
            arrivals = _arrivals(t, lf, s)
            sc = [scores[i] for i in t.ids]
            q = quantiles(sc, sc)
            f, o = base[f"{lf:g}"]["fcfs"][k], base[f"{lf:g}"]["oracle"][k]
            for w in s.windows:
                m = _mean_latency(t, arrivals, policy_priorities(f"pars@{w:g}", arrivals, {}, q), s)
                out[f"{w:g}"][f"{lf:g}"].append((f - m) / (f - o) if f - o > 0 else None)
    return out


def cached_recovery(run_dir: Path, which: str, scores: dict[str, float], traces: Sequence[Trace], base: dict,
                    s: SchedSettings) -> dict[str, Any]:
    """recovery() of a run, cached in sched_<which>.json (keyed by the settings, the traces and the scores)."""
    from experiments.loss_ablation.evaluate import sha

    key = sha([asdict(s), [t.ids for t in traces], [[scores[i] for i in t.ids] for t in traces]])
    cache = run_dir / f"sched_{which}.json"
    if cache.is_file():
        got = read_json(cache, cache.name)
        if got.get("key") == key:
            return got["recovery"]
    rec = recovery(scores, traces, base, s)
    write_json_atomic({"key": key, "recovery": rec}, cache, indent=None)
    return rec


def _array(runs: Sequence[dict], w: str, lfs: Sequence[str] | None = None) -> np.ndarray:
    """(seeds, load factors, traces) of the runs' recoveries at window w, NaN where undefined."""
    return np.asarray([[[math.nan if x is None else x for x in r[w][lf]] for lf in (lfs or list(r[w]))]
                       for r in runs], dtype=np.float64)


def per_trace(runs: Sequence[dict], w: str, lfs: Sequence[str] | None = None) -> np.ndarray:
    """Each trace's recovery: mean over the seeds and the load factors (given, else all)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a trace where the oracle gained nothing: NaN
        return np.nanmean(_array(runs, w, lfs), axis=(0, 1))


def cell_value(runs: Sequence[dict], paired: tuple[Sequence[dict], Sequence[dict]] | None) -> dict[str, Any]:
    """Per window: the recovery over traces (mean and t 95 % over traces of each trace's mean over seeds and load
    factors), per load factor the same, and, given paired (the cell's and the reference's runs of the seeds both
    have), the paired difference from the reference by trace."""
    out = {}
    for w in runs[0]:
        lfs = list(runs[0][w])
        row = {**over_traces(per_trace(runs, w).tolist()),
               "per_load_factor": {lf: over_traces(per_trace(runs, w, [lf]).tolist()) for lf in lfs}}
        if paired is not None:
            mine, ref = paired
            row["minus_reference"] = over_traces((per_trace(mine, w) - per_trace(ref, w)).tolist())
        out[w] = row
    return out
