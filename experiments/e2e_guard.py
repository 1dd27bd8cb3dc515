"""The starvation guard's trade-off over traces (issue 6): for each PARS window W, how much p99 latency it costs
against FCFS and how much of the unguarded ranker's mean-latency gain it keeps, pooled by trace.

    .venv/bin/python -m experiments.e2e_guard experiments/runs/2026-12-04_runV/vllm_e2e_runV_seed*.json \\
        --load-factor 2 --out experiments/runs/2026-12-04_runV/vllm_e2e_guard_lf2_runV.json

`vllm_e2e.py` reports the trade-off of one experiment (its `targets.guard_tradeoff`), over its repeats of
one trace. A guard that holds the tail on one trace may not on another, so this pools experiments by trace,
as `e2e_pool.py` does for the recovery: per trace and W,
  p99 ratio  = the mean over its repeats of p99(pars@W) / p99(baseline),
  mean ratio = the same for the mean latency,
  gain kept  = sum over repeats of (baseline - pars@W) / sum of (baseline - pars@W_ref), W_ref being the
               ranker's largest W (no effective guard); a ratio of sums, so that one repeat whose reference
               gain nearly vanishes does not wreck it (run S, seed 52);
then each's mean over traces with a t 95 % interval over traces. Issue 6's target: some W below the
reference keeps p99 within 1.2x the baseline's (`--p99-target`) and at least half of the gain
(`--kept-target`). Prints a table, writes JSON and a PNG of p99 ratio against gain kept, one point per W.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from experiments.lib.args import parser_for
from experiments.lib.experiment_json import rate_of, read_report, trace_key
from experiments.lib.reports import fmt, fmt_ci, md_head
from experiments.lib.stats import over_traces
from experiments.vllm_e2e.policies import pars_window
from pars.common.jsonio import write_json_atomic

# (mean s, p99 s) of one run, by policy and by (experiment, repeat)
Runs = dict[str, dict[tuple[str, int], tuple[float, float]]]


def runs_at(report: dict, rate: float, tag: str) -> Runs:
    """Every run's mean and p99 latency at this rate; repeats keyed by (experiment, repeat), so that two
    experiments of one trace add repeats instead of overwriting them."""
    out: Runs = {}
    for run in report["runs"]:
        lat = run["summary"].get("latency_s")
        if abs(run["rate"] - rate) < 1e-9 and lat is not None:
            out.setdefault(run["policy"], {})[(tag, run["repeat"])] = (lat["mean"], lat["p99"])
    return out


def per_trace(runs: Runs, policy: str, reference: str, baseline: str) -> dict | None:
    """One trace's p99 ratio, mean ratio and gain kept for `policy`, over the repeats that ran it, the
    reference and the baseline; None when no repeat has all three."""
    keys = [k for k in runs.get(policy, {}) if k in runs.get(reference, {}) and k in runs.get(baseline, {})]
    if not keys:
        return None
    base, pol, ref = runs[baseline], runs[policy], runs[reference]
    gained = sum(base[k][0] - pol[k][0] for k in keys)
    reference_gained = sum(base[k][0] - ref[k][0] for k in keys)
    return {"repeats": len(keys),
            "p99_ratio": float(np.mean([pol[k][1] / base[k][1] for k in keys])),
            "mean_ratio": float(np.mean([pol[k][0] / base[k][0] for k in keys])),
            "gain_kept": gained / reference_gained if reference_gained > 0 else float("nan"),
            "reference_gain_s": reference_gained / len(keys)}


def tradeoff(traces: dict[str, Runs], baseline: str, p99_target: float, kept_target: float) -> list[dict]:
    """Per ranker and W: the per-trace values and their means over traces, and whether the target is met."""
    names = sorted({p for runs in traces.values() for p in runs if pars_window(p)},
                   key=lambda p: (pars_window(p)[0] or "", pars_window(p)[1]))
    largest: dict[str | None, str] = {}
    for p in names:  # sorted by W within a ranker: the last one is its reference
        largest[pars_window(p)[0]] = p
    rows = []
    for p in names:
        ranker, w = pars_window(p)
        reference = largest[ranker]
        per = {t: v for t, runs in traces.items() if (v := per_trace(runs, p, reference, baseline)) is not None}
        row = {"policy": p, "ranker": ranker, "window_s": w, "reference": reference, "per_trace": per,
               **{k: over_traces([v[k] for v in per.values()]) for k in ("p99_ratio", "mean_ratio", "gain_kept")}}
        p99, kept = row["p99_ratio"]["mean"], row["gain_kept"]["mean"]
        row["meets_target"] = (p != reference and p99 is not None and kept is not None
                               and p99 <= p99_target and kept >= kept_target)
        rows.append(row)
    return rows


def fmt_stat(stat: dict) -> str:
    """A mean over traces and its t interval, "n/a" without one."""
    if stat["mean"] is None:
        return "n/a"
    return fmt(stat["mean"]) + (" " + fmt_ci(stat["t_ci"]) if stat["t_ci"] else "")


def plot(rows: Sequence[dict], out_png: Path, p99_target: float, kept_target: float, title: str) -> Path:
    """p99 ratio against gain kept: each trace a faint dot, each W's mean over traces with its t intervals on
    both axes; the target's corner shaded."""
    from pars.common.figures import new_figure, save_png

    fig = new_figure(6.4, 4.6)
    ax = fig.add_subplot()
    for j, row in enumerate(rows):
        colour = f"C{j}"
        pts = [(v["p99_ratio"], v["gain_kept"]) for v in row["per_trace"].values() if np.isfinite(v["gain_kept"])]
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=12, color=colour, alpha=0.35)
        x, y = row["p99_ratio"], row["gain_kept"]
        if x["mean"] is None or y["mean"] is None:
            continue
        xerr = [[x["mean"] - x["t_ci"][0]], [x["t_ci"][1] - x["mean"]]] if x["t_ci"] else None
        yerr = [[y["mean"] - y["t_ci"][0]], [y["t_ci"][1] - y["mean"]]] if y["t_ci"] else None
        ax.errorbar([x["mean"]], [y["mean"]], xerr=xerr, yerr=yerr, fmt="D", color=colour, capsize=4,
                    label=f"{row['policy']} ({x['traces']} traces)")
    ax.axvline(p99_target, color="red", lw=0.8, ls="--", label=f"p99 target {p99_target:g}x")
    ax.axhline(kept_target, color="red", lw=0.8, ls=":", label=f"gain kept target {kept_target:g}")
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    if x0 < p99_target and y1 > kept_target:  # the corner that meets both targets
        ax.fill_between([x0, p99_target], kept_target, y1, color="green", alpha=0.06, label="target met")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("p99 latency / baseline's p99 (mean over traces)")
    ax.set_ylabel("share of the largest W's mean-latency gain kept")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return save_png(fig, out_png)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser_for(__doc__)
    p.add_argument("reports", nargs="+", help="vllm_e2e.py JSON outputs (run with --load-factors)")
    p.add_argument("--load-factor", type=float, required=True, help="the load factor whose runs are pooled")
    p.add_argument("--baseline", default="fcfs", help="the policy p99 and gains are measured against")
    p.add_argument("--p99-target", type=float, default=1.2, help="issue 6: p99 within this multiple of the "
                   "baseline's")
    p.add_argument("--kept-target", type=float, default=0.5, help="issue 6: at least this share of the largest "
                   "W's gain kept")
    p.add_argument("--out", help="JSON output, and a PNG of the trade-off beside it (default: print only)")
    args = p.parse_args(argv)

    traces: dict[str, Runs] = {}
    for path in map(Path, args.reports):
        try:
            report = read_report(path)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
        runs = runs_at(report, rate_of(report, args.load_factor), path.stem)
        if args.baseline not in runs:
            raise SystemExit(f"error: {path} has no {args.baseline} runs at load factor {args.load_factor:g}")
        merged = traces.setdefault(trace_key(report, path), {})
        for policy, by_repeat in runs.items():
            merged.setdefault(policy, {}).update(by_repeat)
    rows = tradeoff(traces, args.baseline, args.p99_target, args.kept_target)
    if not rows:
        raise SystemExit("error: no pars@W policy in these experiments")

    print(f"The starvation guard at load factor {args.load_factor:g}, {len(traces)} traces: mean over traces "
          f"[t 95 % over traces]; baseline {args.baseline}")
    print(md_head(["policy", "traces", "p99 / baseline", "mean / baseline", "gain kept vs largest W", "target met"]))
    for row in rows:
        print(f"| {row['policy']} | {row['p99_ratio']['traces']} | {fmt_stat(row['p99_ratio'])} | "
              f"{fmt_stat(row['mean_ratio'])} | {fmt_stat(row['gain_kept'])} | "
              f"{'yes' if row['meets_target'] else 'no'} |")
    met = [r["policy"] for r in rows if r["meets_target"]]
    print(f"issue 6's guard target (p99 <= {args.p99_target:g}x, gain kept >= {args.kept_target:g}): "
          + (f"met by {', '.join(met)}" if met else "not met"))
    if args.out:
        out = Path(args.out)
        result = {"what": "the starvation guard's trade-off, pooled by trace (benchmarks/e2e_guard.py)",
                  "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "reports": args.reports, "load_factor": args.load_factor, "baseline": args.baseline,
                  "p99_target": args.p99_target, "kept_target": args.kept_target, "traces": len(traces),
                  "windows": rows, "met_by": met}
        write_json_atomic(result, out)
        png = plot(rows, out.with_suffix(".png"), args.p99_target, args.kept_target,
                   f"load factor {args.load_factor:g}, {len(traces)} traces: the guard's knob W")
        print(f"wrote {out} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
