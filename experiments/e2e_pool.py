"""Pool several `vllm_e2e.py` experiments at one load factor: how much of the oracle's mean-latency gain each
PARS window recovers, over every repeat of every experiment (issue 6).

One experiment's repeats are few (5-10, an hour each on 2 cores) and one repeat's recovery moves by +-0.2
(identical arrivals and priorities; the VM's timing decides which long request takes a freed slot first).
Experiments run on different days measure capacity anew, so their rates differ a little at the same load
factor: they are pooled as load factors, not as rates, and each repeat's recovery is taken within its own
experiment (fcfs, oracle and the policy of the same repeat, as `vllm_e2e.py` pairs them).

    .venv/bin/python -m experiments.e2e_pool experiments/runs/2026-11-24_runE/vllm_e2e_runE.json \\
        experiments/runs/2026-11-24_runF/vllm_e2e_runF.json --load-factor 2 \\
        --out experiments/runs/2026-11-24_runG/vllm_e2e_pool_lf2.json

Prints a table and writes JSON: per experiment and pooled, the mean of the per-repeat recoveries with its t
interval, and the pooled ratio of summed gains (sum over repeats of fcfs - policy over sum of fcfs - oracle,
which weights a repeat by the size of its oracle gain and is steadier than a mean of ratios). Repeats of one
trace (`--seed`) share its 80 rows, so the pooled interval over repeats leaves out which rows were drawn:
"by trace" takes each trace's recovery (over every experiment that replayed it) and a t interval over
traces, the estimate for the ranker on a trace not yet seen; a trace's recovery is both the mean of its repeats'
ratios and the ratio of its summed gains, the steadier one (issue 6's measure from run T on).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from experiments.lib.args import parse_same, parser_for
from experiments.lib.experiment_json import rate_of, read_report, trace_key
from experiments.lib.reports import fmt, fmt_ci, md_head
from experiments.lib.stats import over_traces, t_interval
from pars.common.jsonio import write_json_atomic


def fell_back(run: dict) -> bool:
    """Whether any request of this run went on with the neutral priority (the predictor down or slow)."""
    return (run.get("fallbacks") or 0) > 0


def means_by_repeat(report: dict, rate: float, speed_adjusted: bool = False,
                    skip_fallbacks: bool = False) -> dict[str, dict[int, float]]:
    """Mean latency of every (policy, repeat) at this rate. speed_adjusted: each run's mean times its output
    tokens/s over the median run's, i.e. as if every run had had the median server speed. skip_fallbacks:
    without the gateway runs in which any request fell back to the neutral priority (the predictor was
    down or slow), so what is left measures the ranker's order, not the predictor's availability."""
    runs = [r for r in report["runs"] if abs(r["rate"] - rate) < 1e-9 and r["summary"]["latency_s"] is not None
            and not (skip_fallbacks and fell_back(r))]
    reference = float(np.median([r["summary"]["output_tokens_per_s"] for r in runs])) if runs else 1.0
    out: dict[str, dict[int, float]] = {}
    for run in runs:
        factor = run["summary"]["output_tokens_per_s"] / reference if speed_adjusted else 1.0
        out.setdefault(run["policy"], {})[run["repeat"]] = run["summary"]["latency_s"]["mean"] * factor
    return out


def recoveries(means: dict[str, dict[int, float]], policy: str, baseline: str = "fcfs",
               ceiling: str = "oracle") -> list[tuple[int, float, float, float]]:
    """(repeat, baseline - policy, baseline - ceiling, recovered) for every repeat that has all three."""
    rows = []
    for rep, m in sorted(means.get(policy, {}).items()):
        f, o = means[baseline].get(rep), means[ceiling].get(rep)
        if f is None or o is None:
            continue
        rows.append((rep, f - m, f - o, (f - m) / (f - o) if f != o else float("nan")))
    return rows


def duration_correlation(report: dict, rate: float) -> dict[str, float | None]:
    """Per policy, the correlation over its runs between a run's duration (first send to last answer) and its
    mean latency: every run does the same work, so a high one says the noise is the server's speed."""
    out: dict[str, list[tuple[float, float]]] = {}
    for run in report["runs"]:
        s = run["summary"]
        if abs(run["rate"] - rate) < 1e-9 and s["latency_s"] is not None:
            out.setdefault(run["policy"], []).append((s["makespan_s"], s["latency_s"]["mean"]))
    return {p: (float(np.corrcoef(np.array(v).T)[0, 1]) if len(v) > 2 else None) for p, v in out.items()}


def priority_tau(report: dict, rate: float) -> dict[str, dict]:
    """Per policy that sent its own priorities, Kendall's tau-b between each run's priorities and the served
    lengths (max_tokens), median and range over runs: how good the order was, apart from how it played out.
    The same trace with different rankers, or one ranker on different days, compare on this. `weighted` is
    the median run's length-weighted tau (pars.eval.rank_metrics.length_weighted_tau: a pair counts by its difference
    in served tokens, what misordering it costs)."""
    from scipy.stats import kendalltau

    from pars.eval.rank_metrics import length_weighted_tau

    served = (report.get("trace") or {}).get("max_tokens")
    out: dict[str, list[tuple[float, float]]] = {}
    for run in report["runs"]:
        requests = run.get("requests") or []
        if abs(run["rate"] - rate) > 1e-9 or not served or run["policy"] in ("fcfs", "fcfs-gw") or not requests:
            continue
        sent = [(q["priority"], served[q["i"]]) for q in requests if q.get("priority") is not None]
        if len(sent) > 2:
            prio, lengths = zip(*sent, strict=True)
            out.setdefault(run["policy"], []).append((float(kendalltau(prio, lengths)[0]),
                                                      length_weighted_tau(prio, lengths)))
    return {p: {"median": float(np.median([t for t, _ in v])), "min": min(t for t, _ in v),
                "max": max(t for t, _ in v), "runs": len(v), "weighted": float(np.median([w for _, w in v]))}
            for p, v in out.items()}


def summarize(rows: Sequence[tuple[int, float, float, float]]) -> dict:
    rec = [r[3] for r in rows]
    gains, oracle_gains = sum(r[1] for r in rows), sum(r[2] for r in rows)
    return {"repeats": len(rows), "per_repeat": rec, "mean": float(np.nanmean(rec)) if rec else None,
            "t_ci": t_interval(rec), "ratio_of_sums": gains / oracle_gains if oracle_gains else None}


def ratio_of_sums(rows: Sequence[tuple[int, float, float, float]]) -> float:
    """sum(baseline - policy) / sum(baseline - ceiling) over these repeats (nan when the oracle gains sum to 0)."""
    oracle_gains = sum(r[2] for r in rows)
    return sum(r[1] for r in rows) / oracle_gains if oracle_gains else float("nan")


def by_trace(rows_of: dict[str, list[tuple[int, float, float, float]]]) -> dict:
    """Recovery per trace, over every experiment that replayed it, two ways: the mean of its repeats' ratios
    (`mean`), and the ratio of its summed gains (`ratio_of_sums`), and each's mean with a t interval over
    traces. Repeats of one trace share its rows, so the pooled interval over repeats leaves out which rows
    were drawn; these count a trace once. A repeat whose oracle gain nearly vanishes (the server slowed
    down during it) turns its ratio into a wild number and drags the mean of ratios with it (run S, seed
    52: 7.4 and 13.5); the ratio of sums weights a repeat by its oracle gain and so does not break."""
    per = [{"trace": key, "repeats": len(rows), "mean": float(np.nanmean([r[3] for r in rows])),
            "ratio_of_sums": ratio_of_sums(rows)}
           for key, rows in rows_of.items() if rows]
    means = [t["mean"] for t in per]
    return {"traces": len(per), "per_trace": per, "mean": float(np.mean(means)) if means else None,
            "t_ci": t_interval(means), "ratio_of_sums": over_traces([t["ratio_of_sums"] for t in per])}


def read_experiment(path: Path, load_factor: float, speed_adjusted: bool, aliases: dict[str, str],
                    baseline: str, ceiling: str, skip_fallbacks: bool = False) -> tuple[dict, dict[str, list]]:
    """One vllm_e2e.py report: its summary for the pool, and each PARS (or prompt-length) policy's recovery
    rows, policies renamed by `aliases`. ValueError with a one-line reason when it cannot be pooled."""
    report = read_report(path)
    rate = rate_of(report, load_factor)
    means = means_by_repeat(report, rate, speed_adjusted, skip_fallbacks)
    skipped = [{"policy": aliases.get(r["policy"], r["policy"]), "repeat": r["repeat"], "fallbacks": r["fallbacks"]}
               for r in report["runs"]
               if skip_fallbacks and abs(r["rate"] - rate) < 1e-9 and fell_back(r)]
    clash = [a for a in aliases if a in means and aliases[a] in means]
    if clash:
        raise ValueError(f"{path} has both {clash[0]} and {aliases[clash[0]]}: --same would mix them")
    means = {aliases.get(k, k): v for k, v in means.items()}
    if baseline not in means or ceiling not in means:
        raise ValueError(f"{path} has no {baseline} and {ceiling} runs at {rate:g}/s: nothing to measure "
                         "recovery against")
    # pars@W and its variants (pars+lenX@W), by W, then by name
    pars = sorted((k for k in means if k.startswith("pars") and "@" in k),
                  key=lambda k: (float(k.rsplit("@", 1)[1]), k))
    per, rows_of = {}, {}
    for policy in pars + (["prompt-length"] if "prompt-length" in means else []):
        rows_of[policy] = recoveries(means, policy, baseline, ceiling)
        per[policy] = summarize(rows_of[policy])
    experiment = {"file": str(path), "started_at": report.get("started_at"), "rate": rate, "recovered": per,
                  "duration_vs_mean_corr": duration_correlation(report, rate),
                  "priority_tau": {aliases.get(k, k): v for k, v in priority_tau(report, rate).items()},
                  "tokens_per_s": (report.get("capacity") or {}).get("tokens_per_s"),
                  "trace": trace_key(report, path), "skipped_for_fallbacks": skipped}
    return experiment, rows_of


def paired_by_trace(these: dict[str, list], those: dict[str, list]) -> dict | None:
    """On the traces both sets replayed: each trace's mean recovery in this set minus that in the other, and
    the mean difference with a t interval over those traces (a trace's own difficulty cancels out)."""
    common = [t for t in these if t in those and these[t] and those[t]]
    if not common:
        return None
    per = [{"trace": t, "this": float(np.nanmean([r[3] for r in these[t]])),
            "versus": float(np.nanmean([r[3] for r in those[t]]))} for t in common]
    for row in per:
        row["difference"] = row["this"] - row["versus"]
        row["ratio_of_sums_this"] = ratio_of_sums(these[row["trace"]])
        row["ratio_of_sums_versus"] = ratio_of_sums(those[row["trace"]])
        row["ratio_of_sums_difference"] = row["ratio_of_sums_this"] - row["ratio_of_sums_versus"]
    diffs = [row["difference"] for row in per]
    sum_diffs = [r["ratio_of_sums_difference"] for r in per if np.isfinite(r["ratio_of_sums_difference"])]
    return {"traces": len(per), "per_trace": per, "mean_this": float(np.mean([r["this"] for r in per])),
            "mean_versus": float(np.mean([r["versus"] for r in per])), "mean_difference": float(np.mean(diffs)),
            "t_ci": t_interval(diffs),
            "ratio_of_sums": {"mean_difference": float(np.mean(sum_diffs)) if sum_diffs else None,
                              "t_ci": t_interval(sum_diffs)}}


def plot_pool(result: dict, out_png: Path, target: float = 0.6) -> Path:
    """Every repeat's recovery, by experiment (x) and policy (colour; x-axis label: the experiment's capacity),
    with each policy's pooled mean and t interval at the right and the target as a dashed line."""
    from pars.common.figures import new_figure, save_png

    experiments = result["experiments"]
    names = list(result["pooled"])
    fig = new_figure(1.6 + 1.1 * (len(experiments) + 2), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / max(len(names), 1)
    for j, name in enumerate(names):
        offset = (j - (len(names) - 1) / 2) * width
        colour = f"C{j}"
        for i, e in enumerate(experiments):
            rec = (e["recovered"].get(name) or {}).get("per_repeat") or []
            ax.scatter([i + offset] * len(rec), rec, s=14, color=colour, alpha=0.7)
        ax.scatter([], [], s=14, color=colour, label=name)  # one legend entry per policy
        pooled = result["pooled"][name]
        if pooled["t_ci"]:
            lo, hi = pooled["t_ci"]
            x = len(experiments) + offset
            ax.errorbar([x], [pooled["mean"]], yerr=[[pooled["mean"] - lo], [hi - pooled["mean"]]], fmt="D",
                        color=colour, capsize=4)
        traces = (result.get("by_trace") or {}).get(name)
        if traces:
            x = len(experiments) + 1 + offset
            ax.scatter([x] * traces["traces"], [t["mean"] for t in traces["per_trace"]], s=14, color=colour,
                       marker="s", alpha=0.7)
            if traces["t_ci"]:
                lo, hi = traces["t_ci"]
                ax.errorbar([x], [traces["mean"]], yerr=[[traces["mean"] - lo], [hi - traces["mean"]]], fmt="D",
                            color=colour, capsize=4)
            sums = traces.get("ratio_of_sums") or {}
            x = len(experiments) + 2 + offset
            values = [t["ratio_of_sums"] for t in traces["per_trace"] if np.isfinite(t["ratio_of_sums"])]
            ax.scatter([x] * len(values), values, s=14, color=colour, marker="^", alpha=0.7)
            if sums.get("t_ci"):
                lo, hi = sums["t_ci"]
                ax.errorbar([x], [sums["mean"]], yerr=[[sums["mean"] - lo], [hi - sums["mean"]]], fmt="D",
                            color=colour, capsize=4)
    ax.axhline(target, color="red", lw=0.8, ls="--", label=f"target {target:g}")
    ax.axhline(0.0, color="grey", lw=0.8)
    labels = [f"{Path(e['file']).stem.removeprefix('vllm_e2e_')}\n{e['tokens_per_s']:.0f} tok/s"
              if e.get("tokens_per_s") else Path(e["file"]).stem for e in experiments]
    ax.set_xticks(range(len(experiments) + 3), labels + ["pooled\n(t 95 %)", "by trace, mean\nof ratios",
                                                          "by trace, ratio\nof sums"], fontsize=8)
    ax.set_ylabel(f"share of {result['ceiling']}'s mean-latency gain recovered")
    ax.set_title(f"load factor {result['load_factor']:g}: each dot one repeat"
                 + (" (speed-adjusted)" if result["speed_adjusted"] else ""), fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    return save_png(fig, out_png)


def model_curve(sim: dict, load_factor: float) -> list[dict]:
    """From a sched_sim.py JSON: per simulated ranker, its tau against the served lengths and the recovery the
    scheduler model gives its largest-W pars policy at this load factor (pooled over the model's traces)."""
    taus = sim.get("ranker_tau_vs_max_tokens") or {}
    best: dict[str, dict] = {}
    for row in sim.get("summary", []):
        if abs(row["load_factor"] - load_factor) > 1e-9 or not row["policy"].startswith("pars@"):
            continue
        w = float(row["policy"].rsplit("@", 1)[1])
        if row["ranker"] in taus and (row["ranker"] not in best or w > best[row["ranker"]]["w"]):
            best[row["ranker"]] = {"w": w, "row": row}
    return sorted(({"ranker": k, "tau": taus[k], "policy": v["row"]["policy"],
                    "recovered": v["row"]["recovered_pooled"], "p10_p90": v["row"].get("recovered_p10_p90")}
                   for k, v in best.items()), key=lambda c: c["tau"])


def plot_vs_tau(result: dict, out_png: Path, curve: Sequence[dict] = (), target: float = 0.6) -> Path:
    """Each experiment's recovery (mean of its repeats, t interval) against the tau of the order it sent,
    one colour per policy; the scheduler model's recovery against its rankers' tau as a line when given."""
    from pars.common.figures import new_figure, save_png

    fig = new_figure(6.4, 4.4)
    ax = fig.add_subplot()
    for j, name in enumerate(result["pooled"]):
        pts = [(e["priority_tau"][name]["median"], e["recovered"][name]) for e in result["experiments"]
               if name in e["recovered"] and name in e["priority_tau"]]
        for k, (tau, rec) in enumerate(pts):
            ci = rec["t_ci"]
            yerr = [[rec["mean"] - ci[0]], [ci[1] - rec["mean"]]] if ci else None
            ax.errorbar([tau], [rec["mean"]], yerr=yerr, fmt="o", color=f"C{j}", capsize=3, alpha=0.8,
                        label=name if k == 0 else None)
    if curve:
        ax.plot([c["tau"] for c in curve], [c["recovered"] for c in curve], "k--", lw=1,
                label=f"scheduler model ({curve[0]['policy']}, pooled over its traces)")
    ax.axhline(target, color="red", lw=0.8, ls=":", label=f"target {target:g}")
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("Kendall's tau of the priorities sent against the served lengths (median run)")
    ax.set_ylabel(f"share of {result['ceiling']}'s mean-latency gain recovered")
    ax.set_title(f"load factor {result['load_factor']:g}: one point per experiment (its trace), t 95 % over "
                 "repeats" + (" (speed-adjusted)" if result["speed_adjusted"] else ""), fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return save_png(fig, out_png)


def parser() -> argparse.ArgumentParser:
    p = parser_for(__doc__)
    p.add_argument("reports", nargs="+", type=Path, help="vllm_e2e.py JSON outputs (run with --load-factors)")
    p.add_argument("--load-factor", type=float, required=True, help="the load factor whose runs are pooled")
    p.add_argument("--baseline", default="fcfs", help="the policy gains are measured from (fcfs-gw: FCFS through "
                   "the gateway, so that the proxy's cost is in the baseline too)")
    p.add_argument("--ceiling", default="oracle", help="the policy whose gain is the whole (oracle-gw: through the "
                   "gateway)")
    p.add_argument("--speed-adjusted", action="store_true",
                   help="scale each run's mean latency by its output tokens/s over the median run's. In runs E-F "
                        "a run's mean and its duration correlate at 0.98-0.99 within a policy: most of the noise "
                        "is how fast the VM was during that run. The adjustment removes it, and with it any "
                        "effect a policy has on throughput (the proxy's CPU use in PARS runs): it estimates the "
                        "ranking's worth on an equally fast server, not what a user of the gateway gets")
    p.add_argument("--skip-fallback-runs", action="store_true",
                   help="leave out every gateway run in which a request fell back to the neutral priority (the "
                        "predictor down or slow): the ranker's order alone, as a check beside the full pool, "
                        "which counts those runs as a user would have lived them")
    p.add_argument("--same", action="append", default=[], metavar="NAME=ALIAS",
                   help="pool policy ALIAS of any experiment under NAME (repeatable), e.g. "
                        "'pars@1000=pars[sg_inbatch_bf16]@1000': one ranker named differently in an experiment "
                        "that compared several")
    p.add_argument("--out", type=Path, default=None, help="JSON output, and a PNG of every repeat's recovery "
                   "beside it (default: print only)")
    p.add_argument("--versus", nargs="+", type=Path, default=[], metavar="REPORT",
                   help="a second set of experiments (e.g. the same traces run under other settings): per policy, "
                        "the recovery on the traces both sets replayed, this set minus that one, paired by trace")
    p.add_argument("--versus-load-factor", type=float, default=None, metavar="LF",
                   help="read the --versus set at this load factor instead of --load-factor; with the same files "
                        "on both sides, one load minus another, paired by trace (e.g. --load-factor 1.5 "
                        "--versus-load-factor 2: does the recovery depend on the load?)")
    p.add_argument("--difference", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="two policies of the same experiments (e.g. two rankers run interleaved): B's recovery "
                        "minus A's, paired by trace, with a t interval over traces (repeatable)")
    p.add_argument("--model", type=Path, default=None, metavar="SCHED_SIM_JSON",
                   help="a sched_sim.py JSON (e.g. experiments/runs/<campaign>/sched_sim_noise.json): its recovery "
                        "against its rankers' tau, drawn beside the experiments' in the *_vs_tau.png")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.versus_load_factor is not None and not args.versus:
        p.error("--versus-load-factor needs --versus (the experiments to read at that load factor)")
    curve: list[dict] = []
    if args.model is not None:
        try:
            curve = model_curve(read_report(args.model), args.load_factor)
        except ValueError as exc:
            p.error(str(exc))
        if not curve:
            p.error(f"{args.model} has no pars policy at load factor {args.load_factor:g}")
    try:
        aliases = parse_same(args.same)
    except ValueError as exc:
        p.error(str(exc))

    versus_lf = args.load_factor if args.versus_load_factor is None else args.versus_load_factor
    try:
        experiments, pooled_rows, trace_rows = read_set(args.reports, args.load_factor, args, aliases)
        versus_rows = read_set(args.versus, versus_lf, args, aliases)[2]
    except ValueError as exc:
        p.error(str(exc))
    pooled = {k: summarize(v) for k, v in pooled_rows.items()}
    traces = {k: by_trace(v) for k, v in trace_rows.items()}
    versus = ({k: paired_by_trace(v, versus_rows.get(k, {})) for k, v in trace_rows.items()}
              if args.versus else None)
    differences = {}
    for a, b in args.difference:
        missing = [k for k in (a, b) if k not in trace_rows]
        if missing:
            p.error(f"--difference: no experiment has policy {missing[0]!r} (it has {', '.join(trace_rows)})")
        differences[f"{b} - {a}"] = paired_by_trace(trace_rows[b], trace_rows[a])
    result = {"what": "issue 6: share of the oracle's mean-latency gain recovered, pooled over experiments",
              "load_factor": args.load_factor, "baseline": args.baseline, "ceiling": args.ceiling,
              "speed_adjusted": args.speed_adjusted, "skip_fallback_runs": args.skip_fallback_runs, "same": aliases,
              "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "experiments": experiments, "pooled": pooled, "by_trace": traces,
              "versus": {"files": [str(x) for x in args.versus], "load_factor": versus_lf,
                         "by_policy": versus} if versus else None,
              "differences": differences or None,
              "model_curve": {"source": str(args.model), "points": curve} if curve else None}
    print_tables(result, args.baseline)
    if args.out:
        write_json_atomic(result, args.out, indent=1)
        png = plot_pool(result, args.out.with_suffix(".png"))
        png_tau = plot_vs_tau(result, args.out.with_name(args.out.stem + "_vs_tau.png"), curve)
        print(f"wrote {args.out}, {png} and {png_tau}")
    return 0


def read_set(paths: Sequence[Path], load_factor: float, args: argparse.Namespace,
             aliases: dict[str, str]) -> tuple[list[dict], dict[str, list], dict[str, dict[str, list]]]:
    """Experiments at one load factor: each one's summary, every policy's recovery rows (in the order of
    `paths`), and the same rows by trace (policy -> trace -> rows). ValueError when one cannot be pooled."""
    experiments, pooled_rows, trace_rows = [], {}, {}
    for path in paths:
        experiment, rows_of = read_experiment(path, load_factor, args.speed_adjusted, aliases, args.baseline,
                                              args.ceiling, args.skip_fallback_runs)
        experiments.append(experiment)
        for policy, rows in rows_of.items():
            pooled_rows.setdefault(policy, []).extend(rows)
            trace_rows.setdefault(policy, {}).setdefault(experiment["trace"], []).extend(rows)
    return experiments, pooled_rows, trace_rows


def fmt_recovery(s: dict) -> str:
    """A pooled recovery: mean of repeats [t 95 %] (ratio of summed gains, repeats)."""
    return f"{fmt(s['mean'])} {fmt_ci(s['t_ci'], missing='n/a')} (sums {fmt(s['ratio_of_sums'])}, n={s['repeats']})"


def fmt_traces(s: dict) -> str:
    """A mean over traces: mean [t 95 % over traces] (traces)."""
    return f"{fmt(s['mean'])} {fmt_ci(s['t_ci'], missing='n/a')} (traces={s['traces']})"


def print_tables(result: dict, baseline: str) -> None:
    """The recoveries per experiment, pooled and by trace; the paired differences; each experiment's tau of
    the order sent, its capacity and how its runs' durations follow their mean latencies."""
    experiments, pooled, traces = result["experiments"], result["pooled"], result["by_trace"]
    names = list(pooled)
    print(f"recovered share of {result['ceiling']}'s mean-latency gain over {baseline} at load factor "
          f"{result['load_factor']:g}: mean of repeats [t 95 %] (ratio of summed gains, repeats)")
    print(md_head(["experiment", "rate", *names]))
    for e in experiments:
        cells = [fmt_recovery(e["recovered"][k]) if k in e["recovered"] else "" for k in names]
        print(f"| {Path(e['file']).stem} | {e['rate']:g}/s | " + " | ".join(cells) + " |")
    print("| pooled | | " + " | ".join(fmt_recovery(pooled[k]) for k in names) + " |")
    print("| by trace: mean of the traces' means [t 95 % over traces] | | "
          + " | ".join(fmt_traces(traces[k]) for k in names) + " |")
    print("| by trace: mean of the traces' ratios of summed gains [t 95 % over traces] | | "
          + " | ".join(fmt_traces(traces[k]["ratio_of_sums"]) for k in names) + " |")
    for k, v in ((result["versus"] or {}).get("by_policy") or {}).items():
        if v is None:
            print(f"--versus: no trace in both sets has {k}")
            continue
        print(f"{k}, paired by trace over the {v['traces']} traces both sets replayed: this set {fmt(v['mean_this'])}, "
              f"--versus set {fmt(v['mean_versus'])}, difference {fmt(v['mean_difference'], signed=True)} "
              + fmt_ci(v["t_ci"], signed=True, missing="(one trace: no interval)"))
    for name, v in (result["differences"] or {}).items():
        print(f"{name}, paired by trace over {v['traces']} traces: {fmt(v['mean_this'])} against "
              f"{fmt(v['mean_versus'])}, difference {fmt(v['mean_difference'], signed=True)} "
              + fmt_ci(v["t_ci"], signed=True, missing="(one trace)"))
        rs = v["ratio_of_sums"]
        if rs["mean_difference"] is not None:
            print(f"  by the traces' ratios of summed gains: difference {fmt(rs['mean_difference'], signed=True)} "
                  + fmt_ci(rs["t_ci"], signed=True, missing="(one trace)"))
    print("\nKendall's tau of the priorities sent against the served lengths (median over runs), and the capacity "
          "measured before each experiment:\n" + md_head(["experiment", "tokens/s", *names]))
    for e in experiments:
        taus = [fmt(e["priority_tau"][k]["median"], 3) if k in e["priority_tau"] else "" for k in names]
        tps = f"{e['tokens_per_s']:.0f}" if e["tokens_per_s"] else ""
        print(f"| {Path(e['file']).stem} | {tps} | " + " | ".join(taus) + " |")
    for e in experiments:
        corr = {k: round(v, 2) for k, v in e["duration_vs_mean_corr"].items() if v is not None}
        print(f"{Path(e['file']).stem}: correlation of a run's duration with its mean latency, per policy: {corr}")


if __name__ == "__main__":
    raise SystemExit(main())
