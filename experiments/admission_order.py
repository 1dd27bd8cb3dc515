"""Does vLLM admit requests in the order of the priorities they were sent with? A check on `vllm_e2e.py --stream`
experiments (issue 6).

Fed the very priorities the gateway sent, the scheduler model (`e2e_replay.py`) recovers more of the oracle's
gain than the real PARS runs do, while it matches the real FCFS and oracle runs. One explanation it cannot
see is vLLM admitting requests out of priority order on one path and not the other. A streamed run dates
each request's first token, so its admission can be estimated:

    reached vLLM  = sent + scoring time (x-pars-score-ms; 0 for the direct policies)
    admitted      = sent + TTFT - prompt tokens x --prefill-ms-per-token (its prefill, paid before token 1)

An inversion is an admission of request j while an earlier-arrived or better request i was waiting: i had
reached vLLM at least --tolerance-s before j was admitted, was itself admitted at least --tolerance-s after
j, and (priority_i, reached_i) < (priority_j, reached_j), vLLM's order (ties by arrival). A scheduler that
honours the priorities has none beyond the estimate's error, whatever the policy.

    .venv/bin/python -m experiments.admission_order experiments/runs/2026-11-24_runL/vllm_e2e_runL.json \\
        --out experiments/runs/2026-11-24_runL/admission_order_runL.json

Prints a table and writes JSON and a PNG (per policy, one repeat: admission rank against priority rank).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from experiments.lib.args import parser_for
from experiments.lib.experiment_json import read_report
from experiments.lib.reports import fmt, md_head
from pars.common.jsonio import write_json_atomic


def admissions(run: dict, prompt_tokens: Sequence[int], prefill_ms_per_token: float) -> list[dict]:
    """Per finished request: when it reached vLLM, when it was admitted (estimated), its priority."""
    out = []
    for q in run["requests"]:
        if q.get("error") or q.get("ttft_s") is None:
            continue
        reached = q["sent_s"] + (q.get("score_ms") or 0.0) / 1000.0
        admitted = q["sent_s"] + q["ttft_s"] - prompt_tokens[q["i"]] * prefill_ms_per_token / 1000.0
        out.append({"i": q["i"], "priority": q["priority"], "reached": reached, "admitted": max(admitted, reached)})
    return out


def inversions(reqs: Sequence[dict], tolerance_s: float) -> dict:
    """Admissions that passed over a waiting request vLLM should have taken first (module docstring)."""
    key = [(r["priority"], r["reached"]) for r in reqs]
    bad, passed_over = 0, []
    for j, rj in enumerate(reqs):
        waiting_better = [i for i, ri in enumerate(reqs)
                          if i != j and ri["reached"] <= rj["admitted"] - tolerance_s
                          and ri["admitted"] >= rj["admitted"] + tolerance_s and key[i] < key[j]]
        if waiting_better:
            bad += 1
        passed_over.append(len(waiting_better))
    n = len(reqs)
    return {"requests": n, "inverted_admissions": bad, "share": bad / n if n else None,
            "mean_passed_over": float(np.mean(passed_over)) if n else None}


def rank_pairs(reqs: Sequence[dict]) -> tuple[list[int], list[int]]:
    """(priority rank, admission rank) of each request: a scheduler in priority order puts them on a line,
    bent only where a better request had not arrived yet."""
    by_prio = sorted(range(len(reqs)), key=lambda k: (reqs[k]["priority"], reqs[k]["reached"]))
    by_admit = sorted(range(len(reqs)), key=lambda k: reqs[k]["admitted"])
    prank, arank = [0] * len(reqs), [0] * len(reqs)
    for r, k in enumerate(by_prio):
        prank[k] = r
    for r, k in enumerate(by_admit):
        arank[k] = r
    return prank, arank


def plot(examples: dict[str, tuple[list[int], list[int]]], out_png: Path, title: str) -> Path:
    from pars.common.figures import new_figure, save_png

    fig = new_figure(3.2 * max(len(examples), 1), 3.4)
    for k, (policy, (prank, arank)) in enumerate(examples.items()):
        ax = fig.add_subplot(1, len(examples), k + 1)
        ax.scatter(prank, arank, s=8)
        ax.set_title(policy, fontsize=9)
        ax.set_xlabel("rank by (priority, arrival)", fontsize=8)
        if k == 0:
            ax.set_ylabel("rank by admission", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    return save_png(fig, out_png)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser_for(__doc__)
    p.add_argument("report", type=Path, help="a vllm_e2e.py JSON from a --stream experiment")
    p.add_argument("--prefill-ms-per-token", type=float, default=0.0,
                   help="prefill cost subtracted from TTFT to date the admission (0: at the first token; "
                        "e2e_replay.py's fits put it at 0.15-0.3)")
    p.add_argument("--tolerance-s", type=float, default=0.1,
                   help="how far apart two events must be to count as ordered (the estimate's error)")
    p.add_argument("--out", type=Path, help="JSON output, and a PNG beside it")
    args = p.parse_args(argv)
    if args.prefill_ms_per_token < 0 or args.tolerance_s < 0:
        p.error("--prefill-ms-per-token and --tolerance-s must be >= 0")
    try:
        report = read_report(args.report)
    except ValueError as exc:
        p.error(str(exc))
    prompt_tokens = report["trace"]["prompt_tokens"]
    streamed = [r for r in report["runs"] if any(q.get("ttft_s") is not None for q in r["requests"])]
    if not streamed:
        p.error(f"{args.report} has no streamed runs (run vllm_e2e.py with --stream): no TTFT to date admissions")

    cells: dict[tuple[float, str], list[dict]] = {}
    examples: dict[str, tuple[list[int], list[int]]] = {}
    top = max(r["rate"] for r in streamed)
    for run in streamed:
        reqs = admissions(run, prompt_tokens, args.prefill_ms_per_token)
        cells.setdefault((run["rate"], run["policy"]), []).append(
            {"repeat": run["repeat"], **inversions(reqs, args.tolerance_s)})
        if run["rate"] == top and run["policy"] not in examples:
            examples[run["policy"]] = rank_pairs(reqs)
    rows = [{"rate": rate, "policy": policy, "runs": len(v),
             "share_inverted": float(np.mean([x["share"] for x in v])),
             "mean_passed_over": float(np.mean([x["mean_passed_over"] for x in v])), "per_run": v}
            for (rate, policy), v in sorted(cells.items())]
    print(f"admissions out of vLLM's order (prefill {args.prefill_ms_per_token:g} ms/token, tolerance "
          f"{args.tolerance_s:g} s), mean over runs")
    print(md_head(["rate/s", "policy", "runs", "share of admissions inverted", "waiting better requests passed over"]))
    for r in rows:
        print(f"| {r['rate']:g} | {r['policy']} | {r['runs']} | {fmt(r['share_inverted'], 3)} | "
              f"{fmt(r['mean_passed_over'])} |")
    if args.out:
        result = {"what": "issue 6: does vLLM admit in the order of the priorities sent", "source": str(args.report),
                  "prefill_ms_per_token": args.prefill_ms_per_token, "tolerance_s": args.tolerance_s,
                  "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cells": rows}
        write_json_atomic(result, args.out, indent=1)
        png = plot(examples, args.out.with_suffix(".png"), f"{args.report.stem}, rate {top:g}/s, first repeat")
        print(f"wrote {args.out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
