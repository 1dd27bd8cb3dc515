"""Replay a `vllm_e2e.py` experiment's runs through `sched_sim.py`'s scheduler model: the same arrivals (as
sent), the same requests and the priorities each run actually sent, so that what the ranking could buy is
told apart from what vLLM's execution made of it (issue 6).

At load factor 2 the real PARS runs recover less of the oracle's gain than the model predicts for the
ranker's scores. If the model, fed the very priorities the gateway sent, recovers more than the real runs,
the shortfall lies in execution (prefill, timing noise, anything the model leaves out), not in the scores or
the gateway's mapping. The model's step time is scaled so that its full-batch throughput equals the capacity
the experiment measured (its burst before the runs), and a prefill cost per prompt token can be added: a
step that admits requests also pays for their prompts, which stalls every running sequence (vLLM on CPU).

    .venv/bin/python -m experiments.e2e_replay experiments/runs/2026-11-24_runF/vllm_e2e_runF.json \\
        --prefill-ms-per-token 0,0.3,1 --out experiments/runs/2026-11-24_runF/e2e_replay_runF.json

`--score-delay` lets a scored request reach the model's server only once the gateway had its score;
`--context-ms-per-token` charges every step for the context (prompt + tokens so far) of each running request;
`--fit` grid-searches a step-time factor, the prefill and the context cost for the model whose mean latencies
are nearest the real ones, and prints the recovery each of the best fits models:

    .venv/bin/python -m experiments.e2e_replay experiments/runs/2026-11-24_runF/vllm_e2e_runF.json --fit \\
        --prefill-ms-per-token 0,0.15,0.3,0.5 --out experiments/runs/2026-11-24_runF/e2e_replay_fit_runF.json

Prints a table and writes JSON: per rate and policy, the real mean recovery of the oracle's gain (mean of
repeats) beside the model's for each prefill cost, the model's mean latency beside the real one, and when
the last answer came (mean over repeats), real and modelled: every policy does the same work, so a policy
whose real runs end later than modelled, when the others do not, ran on a slower server.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy.stats import rankdata, spearmanr

from experiments.lib.args import floats, parser_for
from experiments.lib.experiment_json import read_replayable
from experiments.lib.reports import fmt, md_head
from experiments.lib.scheduler import STEP_BASE_MS, STEP_PER_SEQ_MS, full_batch_tokens_per_s, simulate
from pars.common.jsonio import write_json_atomic


def step_scale(report: dict, slots: int) -> float:
    """Factor on the model's step time that gives the experiment's measured tokens/s at a full batch
    (1 when it measured none)."""
    measured = (report.get("capacity") or {}).get("tokens_per_s")
    if not measured:
        return 1.0
    return full_batch_tokens_per_s(slots) / float(measured)


def with_prompt_length(priorities: Sequence[float], prompt_tokens: Sequence[int], weight: float) -> list[float]:
    """A what-if order: each request's rank among the run's priorities plus `weight` times its prompt's rank
    among the prompt lengths (both scaled to 0..1), so long prompts, whose contexts make every decode step
    dearer, go later. Weight 0 keeps the sent order."""
    n = max(len(priorities) - 1, 1)
    return list(rankdata(priorities) / n + weight * rankdata(prompt_tokens) / n)


SPEEDS = ("capacity", "per-run", "equal")


def speed_factor(sent: np.ndarray, delay: np.ndarray, max_tokens: Sequence[int], prompt_tokens: Sequence[int],
                 prio: Sequence[float], slots: int, base_ms: float, per_seq_ms: float, prefill: float,
                 context: float, real_end: float) -> float:
    """The factor on the step time at which the model's last answer comes when the real run's did: that run's
    own server speed (bisection; the last answer grows with the step time)."""
    lo, hi = 0.1, 10.0
    for _ in range(40):
        mid = (lo * hi) ** 0.5
        lat = delay + simulate(list(sent + delay), max_tokens, prompt_tokens, prio, slots, base_ms * mid,
                               per_seq_ms * mid, prefill, context)
        lo, hi = (mid, hi) if max(sent + lat) < real_end else (lo, mid)
    return (lo * hi) ** 0.5


def replay(report: dict, prefill_values: Sequence[float], score_delay: bool = False,
           context_ms_per_token: float = 0.0, step_factor: float = 1.0, prompt_length_weight: float = 0.0,
           speed: str = "capacity", factor_cache: dict | None = None) -> dict:
    """`speed`: the model's step time for each run. capacity: the experiment's measured capacity (times
    `step_factor`) for every run; per-run: each run's own, the one at which the model's last answer comes when
    the real one did; equal: every policy of a repeat at the mean of that repeat's fcfs and oracle runs' own
    speeds, as if the scored runs had not run slower. per-run and equal need the same per-run factors (a
    bisection of 40 simulations each): a `factor_cache` dict shared between calls on one report computes
    them once."""
    if speed not in SPEEDS:
        raise ValueError(f"speed must be one of {SPEEDS}, not {speed!r}")
    trace = report["trace"]
    max_tokens, prompt_tokens = trace["max_tokens"], trace["prompt_tokens"]
    slots = int(report["config"]["max_num_seqs"])
    scale = step_scale(report, slots) * step_factor
    base, per_seq = STEP_BASE_MS * scale, STEP_PER_SEQ_MS * scale
    cells: dict[tuple[float, str], dict] = {}
    todo = []
    for run in report["runs"]:
        reqs = sorted(run["requests"], key=lambda q: q["i"])
        if any(q["latency_s"] is None for q in reqs):
            continue  # a failed request: its latency is unknown, so is the run's mean
        sent = np.asarray([q["sent_s"] for q in reqs])
        # with score_delay a scored request reaches the server only once the gateway has its score (its
        # x-pars-score-ms); its latency still counts from the send
        delay = np.asarray([(q.get("score_ms") or 0.0) / 1000.0 if score_delay else 0.0 for q in reqs])
        prio = [q["priority"] if q["priority"] is not None else 0 for q in reqs]
        cell = cells.setdefault((run["rate"], run["policy"]), {"real": {}, "model": {p: {} for p in prefill_values},
                                                                "real_end": [], "model_end": {p: [] for p in
                                                                                              prefill_values},
                                                                "factor": {p: {} for p in prefill_values}})
        cell["real"][run["repeat"]] = float(np.mean([q["latency_s"] for q in reqs]))
        # the last answer's time from the first send: how long the run took to do the same work
        real_end = max(q["sent_s"] + q["latency_s"] for q in reqs)
        cell["real_end"].append(real_end)
        # does the order favour long prompts? (their contexts make every decode step dearer)
        if len(set(prio)) > 1 and len(set(prompt_tokens)) > 1:
            cell.setdefault("rho_prompt", []).append(float(spearmanr(prio, prompt_tokens).statistic))
        if prompt_length_weight and run["policy"].startswith("pars"):
            prio = with_prompt_length(prio, prompt_tokens, prompt_length_weight)
        own = {}
        for pf in prefill_values:
            if speed == "capacity":
                own[pf] = 1.0
                continue
            key = (run["rate"], run["policy"], run["repeat"], pf, score_delay, context_ms_per_token, step_factor,
                   prompt_length_weight)
            if factor_cache is not None and key in factor_cache:
                own[pf] = factor_cache[key]
                continue
            own[pf] = speed_factor(sent, delay, max_tokens, prompt_tokens, prio, slots, base, per_seq, pf,
                                   context_ms_per_token, real_end)
            if factor_cache is not None:
                factor_cache[key] = own[pf]
        todo.append((run, cell, sent, delay, prio, own))
    if speed == "equal":  # each repeat's direct runs set the speed of all its runs
        ref: dict[tuple[float, int], list[dict[float, float]]] = {}
        for run, _, _, _, _, own in todo:
            if run["policy"] in ("fcfs", "oracle"):
                ref.setdefault((run["rate"], run["repeat"]), []).append(own)
    for run, cell, sent, delay, prio, own in todo:
        for pf in prefill_values:
            factor = own[pf]
            if speed == "equal" and ref.get((run["rate"], run["repeat"])):
                factor = float(np.mean([o[pf] for o in ref[(run["rate"], run["repeat"])]]))
            cell["factor"][pf][run["repeat"]] = own[pf]
            lat = delay + simulate(list(sent + delay), max_tokens, prompt_tokens, prio, slots, base * factor,
                                   per_seq * factor, pf, context_ms_per_token)
            cell["model"][pf][run["repeat"]] = float(lat.mean())
            cell["model_end"][pf].append(float(max(sent + lat)))

    def recovered(means: dict[str, dict[int, float]], policy: str) -> float | None:
        f, o, m = means["fcfs"], means["oracle"], means[policy]
        rec = [(f[r] - m[r]) / (f[r] - o[r]) for r in m if r in f and r in o and f[r] != o[r]]
        return float(np.mean(rec)) if rec else None

    rows = []
    for rate in sorted({r for r, _ in cells}):
        policies = [p for r, p in cells if r == rate]
        if "fcfs" not in policies or "oracle" not in policies:
            continue
        real = {p: cells[(rate, p)]["real"] for p in policies}
        model = {pf: {p: cells[(rate, p)]["model"][pf] for p in policies} for pf in prefill_values}
        for p in policies:
            rows.append({"rate": rate, "policy": p, "repeats": len(real[p]),
                         "real_mean_s": float(np.mean(list(real[p].values()))),
                         "real_last_answer_s": float(np.mean(cells[(rate, p)]["real_end"])),
                         "model_last_answer_s": {f"{pf:g}": float(np.mean(cells[(rate, p)]["model_end"][pf]))
                                                 for pf in prefill_values},
                         "model_mean_s": {f"{pf:g}": float(np.mean(list(model[pf][p].values())))
                                          for pf in prefill_values},
                         # each run's own speed (1 under --speed capacity): is one policy's server slower?
                         "speed_factor": {f"{pf:g}": float(np.mean(list(cells[(rate, p)]["factor"][pf].values())))
                                          for pf in prefill_values},
                         "speed_factor_by_repeat": {f"{pf:g}": cells[(rate, p)]["factor"][pf]
                                                    for pf in prefill_values},
                         "rho_priority_prompt_tokens": (float(np.mean(cells[(rate, p)]["rho_prompt"]))
                                                        if cells[(rate, p)].get("rho_prompt") else None),
                         "real_recovered": recovered(real, p) if p not in ("fcfs", "oracle") else None,
                         "model_recovered": ({f"{pf:g}": recovered(model[pf], p) for pf in prefill_values}
                                             if p not in ("fcfs", "oracle") else None)})
    return {"step_scale": scale, "step_factor": step_factor, "speed": speed, "score_delay": score_delay,
            "context_ms_per_token": context_ms_per_token, "prompt_length_weight": prompt_length_weight,
            "rows": rows}


def fit(report: dict, factors: Sequence[float], prefills: Sequence[float], contexts: Sequence[float],
        score_delay: bool = False, top: int = 5) -> list[dict]:
    """Grid search of the model's free costs (a factor on the step time, prefill and context per token) for
    the one whose mean latencies are nearest the real ones over every (rate, policy) cell, sum of squares.
    The best fits, each with the recovery it models per policy: if a cost the first model lacks explains
    the gap, the fitted model's recovery falls to the real one."""
    fits = []
    for factor in factors:
        for ctx in contexts:
            rows = replay(report, prefills, score_delay, ctx, factor)["rows"]
            for pf in prefills:
                key = f"{pf:g}"
                fits.append({
                    "step_factor": factor, "prefill_ms_per_token": pf, "context_ms_per_token": ctx,
                    "sse_mean_s2": float(sum((r["model_mean_s"][key] - r["real_mean_s"]) ** 2 for r in rows)),
                    "sse_last_answer_s2": float(sum((r["model_last_answer_s"][key] - r["real_last_answer_s"]) ** 2
                                                    for r in rows)),
                    "model_recovered": {f"{r['rate']:g}/{r['policy']}": r["model_recovered"][key]
                                        for r in rows if r["model_recovered"]},
                    "real_recovered": {f"{r['rate']:g}/{r['policy']}": r["real_recovered"]
                                       for r in rows if r["real_recovered"] is not None}})
    return sorted(fits, key=lambda f: f["sse_mean_s2"])[:top]


def parser() -> argparse.ArgumentParser:
    p = parser_for(__doc__)
    p.add_argument("report", type=Path, help="a vllm_e2e.py JSON output")
    p.add_argument("--prefill-ms-per-token", type=floats, default=[0.0, 0.3, 1.0],
                   help="prefill costs to model, ms per admitted prompt token, comma list")
    p.add_argument("--score-delay", action="store_true",
                   help="model each scored request as reaching the server when the gateway had its score "
                        "(sent + its score_ms) rather than when it was sent")
    p.add_argument("--context-ms-per-token", type=float, default=0.0,
                   help="also charge every step this many ms per token of context (prompt + tokens so far) of "
                        "each running request: decode cost that grows with context length")
    p.add_argument("--step-factor", type=float, default=1.0,
                   help="multiply the model's step time (after scaling it to the measured capacity) by this")
    p.add_argument("--speed", choices=SPEEDS, default="capacity",
                   help="the model's server speed for each run: capacity (the experiment's measured capacity, "
                        "for every run), per-run (each run's own: the step time at which the model's last answer "
                        "comes when the real one did), equal (every policy of a repeat at the mean speed of its "
                        "fcfs and oracle runs: what the scored runs would have got on an equally fast server)")
    p.add_argument("--prompt-length-weight", type=float, default=0.0,
                   help="what-if: feed the model the PARS runs' order with this weight of prompt-length rank "
                        "added (long prompts later; real columns stay the sent order's)")
    p.add_argument("--fit", action="store_true",
                   help="instead: grid-search the step-time factor (--fit-step-factors), prefill "
                        "(--prefill-ms-per-token) and context (--fit-context-ms) costs for the model nearest the "
                        "real mean latencies, and print the best fits with the recovery each models")
    p.add_argument("--fit-step-factors", type=floats, default=[0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    p.add_argument("--fit-context-ms", type=floats, default=[0.0, 0.001, 0.002, 0.003, 0.004, 0.006])
    p.add_argument("--out", type=Path, default=None, help="JSON output (default: print only)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if (any(x < 0 for x in args.prefill_ms_per_token) or args.context_ms_per_token < 0
            or args.prompt_length_weight < 0 or args.step_factor <= 0):
        p.error("--prefill-ms-per-token, --context-ms-per-token and --prompt-length-weight must be >= 0, "
                "--step-factor > 0")
    try:
        report = read_replayable(args.report)
    except ValueError as exc:
        p.error(str(exc))
    if args.fit:
        fits = fit(report, args.fit_step_factors, args.prefill_ms_per_token, args.fit_context_ms, args.score_delay)
        print_fits(fits)
        if args.out:
            write_json_atomic({"what": "issue 6: the scheduler model's costs fitted to a vllm_e2e experiment's real "
                                       "mean latencies, best fits first", "source": str(args.report),
                               "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "score_delay": args.score_delay, "grid": {
                                   "step_factors": args.fit_step_factors,
                                   "prefill_ms_per_token": args.prefill_ms_per_token,
                                   "context_ms_per_token": args.fit_context_ms}, "fits": fits}, args.out, indent=1)
            print(f"wrote {args.out}")
        return 0
    result = replay(report, args.prefill_ms_per_token, args.score_delay, args.context_ms_per_token,
                    args.step_factor, args.prompt_length_weight, args.speed)
    print_replay(result, args.prefill_ms_per_token)
    if args.out:
        out = {"what": "issue 6: a vllm_e2e experiment's runs replayed through sched_sim's model with the "
                       "priorities they sent", "source": str(args.report),
               "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "prefill_ms_per_token": args.prefill_ms_per_token, **result}
        write_json_atomic(out, args.out, indent=1)
        print(f"wrote {args.out}")
    return 0


def print_fits(fits: Sequence[dict]) -> None:
    """The best fits, each with the recovery it models per (rate/policy) cell, under the real recovery."""
    cells = list(fits[0]["model_recovered"])
    print("best fits of the model's costs to the real mean latencies (sum of squared errors over cells)")
    print(md_head(["step factor", "prefill ms/token", "context ms/token", "SSE mean s²", "SSE last answer s²",
                   *cells]))
    print("| real | | | | | " + " | ".join(fmt(fits[0]["real_recovered"][c]) for c in cells) + " |")
    for f in fits:
        print(f"| {f['step_factor']:g} | {f['prefill_ms_per_token']:g} | {f['context_ms_per_token']:g} | "
              f"{fmt(f['sse_mean_s2'])} | {fmt(f['sse_last_answer_s2'], 1)} | "
              + " | ".join(fmt(f["model_recovered"][c]) for c in cells) + " |")


def print_replay(result: dict, prefills: Sequence[float]) -> None:
    """Per rate and policy: the real mean latency, recovery and last answer beside the model's at each prefill
    cost."""
    pfs = [f"{x:g}" for x in prefills]
    print(f"model step time x{result['step_scale']:.3f} (full-batch throughput = the experiment's measured "
          "capacity); recovered = mean over repeats of (fcfs - policy) / (fcfs - oracle)")
    if result["speed"] != "capacity":
        print(f"--speed {result['speed']}: each run's own speed factor (on that step time), mean per policy: "
              + ", ".join(f"{r['policy']} " + "/".join(fmt(r["speed_factor"][x], 3) for x in pfs)
                          for r in result["rows"]))
    print(md_head(["rate/s", "policy", "repeats", "real mean s", *(f"model mean s @{x}" for x in pfs),
                   "real recovered", *(f"model recovered @{x}" for x in pfs), "real last answer s",
                   *(f"model last answer s @{x}" for x in pfs)]))
    for r in result["rows"]:
        rec = r["model_recovered"] or {}
        print(f"| {r['rate']:g} | {r['policy']} | {r['repeats']} | {fmt(r['real_mean_s'])} | "
              + " | ".join(fmt(r["model_mean_s"][x]) for x in pfs) + " | "
              + fmt(r["real_recovered"]) + " | "
              + " | ".join(fmt(rec.get(x)) for x in pfs) + " | "
              + f"{fmt(r['real_last_answer_s'], 1)} | " + " | ".join(fmt(r["model_last_answer_s"][x], 1) for x in pfs)
              + " |")


if __name__ == "__main__":
    raise SystemExit(main())
