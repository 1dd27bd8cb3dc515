"""How much of PARS's shortfall in the vLLM experiments is each run's server speed (issue 6)?

`e2e_replay.py` feeds the scheduler model each real run's arrivals and the priorities it sent. At the speed
the experiment measured before its runs, the model recovers more of the oracle's gain than the real PARS runs
did, on every trace of runs J and K. This script replays a set of experiments three ways (`e2e_replay.py
--speed`):

  capacity  every run at the experiment's measured capacity;
  per-run   each run at its own speed: the step time at which the model's last answer comes when the real
            run's did (every policy does the same work, so a run that ends late ran on a slower server);
  equal     every policy of a repeat at the mean speed of that repeat's fcfs and oracle runs: what the scored
            runs would have recovered had they not run slower.

If per-run matches the real recovery, the gap to capacity is the server's speed from run to run; equal then
says what is left once the scored runs' own slowdown is taken out. `slower_than_direct` is how much slower a
policy's runs were than the fcfs and oracle runs of the same repeat (per-run speed factors). Each trace is
averaged over its experiments, then a t interval is taken over traces (as `e2e_pool.py` pools by trace).

    R=experiments/runs
    .venv/bin/python -m experiments.e2e_speed $R/2026-11-24_runJ/vllm_e2e_runJ.json \\
        $R/2026-11-24_runL/vllm_e2e_runL.json $R/2026-11-24_runK/vllm_e2e_runK_seed{2,3,4,5,6,7,8,9,10,11,12}.json \\
        --same 'pars@1000=pars[sg_inbatch_bf16]@1000' --out $R/2026-11-24_runK/e2e_speed_JKL.json

Prints a table and writes JSON, with a PNG beside it (recovery per trace: real against the three models).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from experiments.e2e_replay import SPEEDS, replay
from experiments.lib.args import parse_same, parser_for
from experiments.lib.experiment_json import read_replayable, trace_key
from experiments.lib.reports import fmt, fmt_ci, md_head, tight_figure
from experiments.lib.stats import t_interval
from pars.common.figures import save_png
from pars.common.jsonio import write_json_atomic

DIRECT = ("fcfs", "oracle")


def slower_than_direct(row: dict, direct: Sequence[dict], prefill: str) -> float | None:
    """Mean over repeats of a policy's own speed factor over its repeat's mean direct one, minus 1: +0.02 says
    its runs took 2 % longer per step than the fcfs and oracle runs beside them."""
    ratios = []
    for rep, factor in row["speed_factor_by_repeat"][prefill].items():
        ref = [d["speed_factor_by_repeat"][prefill][rep] for d in direct
               if rep in d["speed_factor_by_repeat"][prefill]]
        if ref:
            ratios.append(factor / float(np.mean(ref)) - 1.0)
    return float(np.mean(ratios)) if ratios else None


def experiment(report: dict, prefill: float, aliases: dict[str, str]) -> dict[str, dict]:
    """Per policy (renamed by `aliases`), at the top rate: the real recovery, the model's under each speed and
    the slowdown against the direct runs."""
    key = f"{prefill:g}"
    factors: dict = {}  # per-run and equal share each run's speed factor
    by_speed = {speed: replay(report, [prefill], speed=speed, factor_cache=factors)["rows"] for speed in SPEEDS}
    top = max(r["rate"] for r in by_speed["capacity"])
    per_run = {r["policy"]: r for r in by_speed["per-run"] if r["rate"] == top}
    direct = [per_run[p] for p in DIRECT if p in per_run]
    out = {}
    for row in by_speed["capacity"]:
        if row["rate"] != top or row["real_recovered"] is None:
            continue
        policy = row["policy"]
        models = {speed: next(r for r in rows if r["rate"] == top and r["policy"] == policy)["model_recovered"][key]
                  for speed, rows in by_speed.items()}
        out[aliases.get(policy, policy)] = {"real": row["real_recovered"], "model": models,
                                            "repeats": row["repeats"],
                                            "slower_than_direct": slower_than_direct(per_run[policy], direct, key)}
    return out


def pool(experiments: Sequence[tuple[str, dict[str, dict]]]) -> dict[str, dict]:
    """Per policy: each trace's mean over its experiments of the real and modelled recoveries and the
    slowdown, then the mean and t interval over traces."""
    traces: dict[str, dict[str, list[dict]]] = {}
    for trace, policies in experiments:
        for policy, cell in policies.items():
            traces.setdefault(policy, {}).setdefault(trace, []).append(cell)
    out = {}
    for policy, by_trace in traces.items():
        per_trace = {}
        for trace, cells in by_trace.items():
            slow = [c["slower_than_direct"] for c in cells if c["slower_than_direct"] is not None]
            per_trace[trace] = {"real": float(np.mean([c["real"] for c in cells])),
                                **{s: float(np.mean([c["model"][s] for c in cells])) for s in SPEEDS},
                                "slower_than_direct": float(np.mean(slow)) if slow else None}
        values = {col: [t[col] for t in per_trace.values() if t[col] is not None]
                  for col in ("real", *SPEEDS, "slower_than_direct")}
        cols = {col: {"mean": float(np.mean(v)) if v else None, "ci": t_interval(v)} for col, v in values.items()}
        out[policy] = {"traces": len(per_trace), "per_trace": per_trace, "by_trace": cols,
                       "traces_slower": sum(x > 0 for x in values["slower_than_direct"])}
    return out


def plot(result: dict, out_png: Path) -> Path:
    """Per policy, each trace's recovery: the real runs' beside the model's at the three speeds."""
    policies = list(result["pooled"])
    fig = tight_figure(10, 3.6 * len(policies))
    axes = fig.subplots(len(policies), 1, squeeze=False)
    for ax, policy in zip(axes[:, 0], policies, strict=True):
        per_trace = result["pooled"][policy]["per_trace"]
        names = list(per_trace)
        x = np.arange(len(names))
        for k, (col, label) in enumerate([("real", "real runs"), ("capacity", "model, measured capacity"),
                                          ("per-run", "model, each run's own speed"),
                                          ("equal", "model, scored runs as fast as fcfs/oracle")]):
            ax.bar(x + (k - 1.5) * 0.2, [per_trace[n][col] for n in names], 0.2, label=label)
        ax.axhline(0.6, color="k", lw=0.8, ls="--")
        ax.set_xticks(x, [n.split(" (")[0] for n in names], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("share of oracle's gain")
        ax.set_title(policy, fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle(f"Recovery per trace, real against the scheduler model (prefill {result['prefill_ms_per_token']:g} "
                 "ms/token)", fontsize=10)
    fig.tight_layout()
    return save_png(fig, out_png)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser_for(__doc__)
    p.add_argument("reports", type=Path, nargs="+", help="vllm_e2e.py JSON outputs")
    p.add_argument("--prefill-ms-per-token", type=float, default=0.3, help="the model's prefill cost")
    p.add_argument("--same", action="append", default=[], metavar="NAME=ALIAS",
                   help="pool policy ALIAS of any experiment under NAME (repeatable), as e2e_pool.py --same: one "
                        "ranker named differently in different experiments")
    p.add_argument("--out", type=Path, default=None, help="JSON output, the PNG beside it (default: print only)")
    args = p.parse_args(argv)
    if args.prefill_ms_per_token < 0:
        p.error("--prefill-ms-per-token must be >= 0")
    try:
        aliases = parse_same(args.same)
    except ValueError as exc:
        p.error(str(exc))
    experiments = []
    for path in args.reports:
        try:
            report = read_replayable(path)
        except ValueError as exc:
            p.error(str(exc))
        experiments.append((trace_key(report, path), experiment(report, args.prefill_ms_per_token, aliases)))
    result = {"what": "issue 6: PARS's recovery of the oracle's gain, real against the scheduler model at three "
                      "server speeds per run", "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "sources": [str(x) for x in args.reports], "prefill_ms_per_token": args.prefill_ms_per_token,
              "same": aliases, "pooled": pool(experiments)}
    print_pooled(result)
    if args.out:
        write_json_atomic(result, args.out, indent=1)
        png = plot(result, args.out.with_suffix(".png"))
        print(f"\nwrote {args.out}, {png}")
    return 0


def pct(x: float | None) -> str:
    """A share as a signed percentage (+2.0 %), "" for None."""
    return "" if x is None else fmt(100 * x, 1, signed=True) + " %"


def print_pooled(result: dict) -> None:
    """Per policy, each trace's recovery, real and modelled, and the slowdown; their means over traces."""
    for policy, r in result["pooled"].items():
        print(f"\n{policy}: {r['traces']} traces; recovered share of the oracle's gain, each trace's mean")
        print(md_head(["trace", "real", "model, capacity", "model, per-run speed", "model, equal speed",
                       "slower than direct"]))
        for trace, t in r["per_trace"].items():
            print(f"| {trace} | {fmt(t['real'])} | {fmt(t['capacity'])} | {fmt(t['per-run'])} | {fmt(t['equal'])} | "
                  f"{pct(t['slower_than_direct'])} |")
        b = r["by_trace"]

        def cell(col: str, as_pct: bool = False, b: dict = b) -> str:
            m, ci = b[col]["mean"], b[col]["ci"]
            if m is None:
                return ""
            if as_pct:
                return pct(m) + (f" [{pct(ci[0])}, {pct(ci[1])}]" if ci else "")
            return fmt(m) + (" " + fmt_ci(ci) if ci else "")

        print(f"| **mean over traces** | {cell('real')} | {cell('capacity')} | {cell('per-run')} | {cell('equal')} | "
              f"{cell('slower_than_direct', True)} ({r['traces_slower']} of {r['traces']} slower) |")


if __name__ == "__main__":
    raise SystemExit(main())
