"""Rankers compared on the vLLM experiments' own traces, offline (issue 6).

A live comparison of two rankers (`vllm_e2e.py --ranker-path A B`) costs ~12 minutes per trace, and one
trace's recovery moves by +-0.15 between traces of the same ranker, so a ranker that orders prompts a little
better cannot be told apart live in a session. What the live recovery follows is the tau of the order sent
(`e2e_pool.py`'s `priority_tau`), and that can be computed without vLLM: score each trace's prompts with each
ranker (torch, fp32) and take Kendall's tau-b against the lengths served (`max_tokens`, capped as in the
experiment). Differences against the first ranker are paired by trace, with a t interval over traces.
The same again for the length-weighted tau (pars.eval.rank_metrics.length_weighted_tau: a pair counts by its
difference in served tokens), which follows the live recovery more closely on run M's traces.

    .venv/bin/python -m experiments.trace_tau experiments/runs/2026-11-24_runM/vllm_e2e_runM_seed*.json \\
        --data /tmp/sg/val_data.json --ranker-path runs/sg_inbatch_bf16/best_model.pt \\
        runs/sg_inbatch_bf16_mean_middle/best_model.pt --ranker-pooling pooler mean \\
        --ranker-truncation head middle --recovery-fit experiments/runs/2026-11-24_runM/vllm_e2e_pool_lf2_runM23.json \\
        --out experiments/runs/2026-11-24_runM/trace_tau_M23.json

Two more kinds of order can be screened beside the checkpoints. `--tfidf-train TRAIN_JSON` adds the TF-IDF +
ridge baseline (pars.eval.baselines) fitted on those rows, a model with other errors than the encoders'. `--ensemble
A,B,...` (repeatable; `all` for every ranker) adds the mean of the named rankers' quantiles within each trace:
what a gateway that averaged several predictors' score quantiles (its own mapping, `GATEWAY_QUANTILE_WINDOW`)
would send, since the experiments prime each trace's prompts into the window.

Prints a table and writes JSON, with a PNG beside it (each trace's tau, first ranker against the others).
Traces replayed by several experiments count once.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from experiments.lib.args import parser_for, per_ranker
from experiments.lib.experiment_json import trace_key
from experiments.lib.reports import fmt, fmt_ci, md_head
from experiments.lib.scoring import cpu_scorer
from experiments.lib.stats import t_interval
from pars.common.jsonio import write_json_atomic


def read_traces(reports: Sequence[Path]) -> dict[str, dict]:
    """{trace key: {"ids", "max_tokens", "file"}}, each trace once (the first report that replayed it)."""
    traces: dict[str, dict] = {}
    for path in reports:
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
            trace = report["trace"]
            ids, served = trace["ids"], trace["max_tokens"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a vllm_e2e.py report with its trace ({exc})") from None
        traces.setdefault(trace_key(report, path), {"ids": [str(i) for i in ids], "max_tokens": served,
                                                    "file": str(path)})
    return traces


def prompts_of(traces: dict[str, dict], rows: Sequence[dict]) -> dict[str, list[str]]:
    """Each trace's prompts, looked up by the row ids vllm_e2e.py recorded (task_id, else the row's index)."""
    by_id = {str(r.get("task_id", i)): r["prompt"] for i, r in enumerate(rows)}
    missing = next((i for t in traces.values() for i in t["ids"] if i not in by_id), None)
    if missing is not None:
        raise ValueError(f"row {missing!r} of a trace is not in --data: give the val_data.json the experiments used")
    return {key: [by_id[i] for i in t["ids"]] for key, t in traces.items()}


def quantiles(scores: Sequence[float]) -> np.ndarray:
    """Mid-rank quantiles in (0, 1), ties shared, as the gateway maps a score within its window."""
    from scipy.stats import rankdata

    return (rankdata(scores) - 0.5) / len(scores)


def parse_ensembles(specs: Sequence[str] | None, names: Sequence[str]) -> dict[str, list[str]]:
    """{ensemble name: its members} from --ensemble values ("a,b" or "all"); ValueError naming the unknown one."""
    out: dict[str, list[str]] = {}
    for spec in specs or []:
        members = list(names) if spec.strip() == "all" else [m.strip() for m in spec.split(",") if m.strip()]
        unknown = [m for m in members if m not in names]
        if unknown or len(members) < 2:
            raise ValueError(f"--ensemble {spec!r}: give two or more of {', '.join(names)} (or all)"
                             + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
        out["ensemble(" + "+".join(members) + ")"] = members
    return out


def compare(taus: dict[str, dict[str, float]], names: Sequence[str]) -> dict:
    """Per ranker: mean tau over traces with its t interval, and the paired difference from the first."""
    keys = list(taus)
    out = {}
    for name in names:
        values = [taus[k][name] for k in keys]
        row = {"mean": float(np.mean(values)), "t_ci": t_interval(values)}
        if name != names[0]:
            diffs = [taus[k][name] - taus[k][names[0]] for k in keys]
            row["minus_first"] = {"mean": float(np.mean(diffs)), "t_ci": t_interval(diffs),
                                  "traces_higher": int(sum(d > 0 for d in diffs)), "traces": len(diffs)}
        out[name] = row
    return out


def recovery_fit(pool: dict, key: str = "median") -> dict:
    """Least-squares line of each experiment's real recovery on the tau of the order it sent (`key` "median";
    "weighted": its length-weighted tau), over an `e2e_pool.py` JSON's experiments (every PARS policy): what
    a mean trace tau is worth live, on that VM."""
    points = [(e["priority_tau"][name][key], rec["mean"]) for e in pool["experiments"]
              for name, rec in e["recovered"].items()
              if key in e["priority_tau"].get(name, {}) and rec["mean"] is not None]
    if len(points) < 3:
        raise ValueError(f"the pool JSON has fewer than 3 experiments with both a recovery and a priority tau "
                         f"({key!r}; rerun e2e_pool.py on its reports for the length-weighted one)")
    tau, rec = np.array(points).T
    slope, intercept = np.polyfit(tau, rec, 1)
    return {"slope": float(slope), "intercept": float(intercept), "r": float(np.corrcoef(tau, rec)[0, 1]),
            "experiments": len(points), "tau_for_0.6": float((0.6 - intercept) / slope) if slope else None}


def plot(result: dict, out_png: Path) -> Path:
    """Left: each trace's tau, first ranker against each other. Right: each order's mean length-weighted tau
    over the traces with its t interval, and the level the recovery fit puts at 0.6 of the oracle's gain."""
    from pars.common.figures import new_figure, save_png

    names = result["rankers"]
    first = names[0]
    fig = new_figure(11, 5.2)
    left, right = fig.subplots(1, 2, width_ratios=[1, 1.1])
    per = result["per_trace"]
    xs = [t[first] for t in per.values()]
    for j, name in enumerate(names[1:], start=1):
        left.scatter(xs, [t[name] for t in per.values()], s=18, color=f"C{j % 10}", label=name)
    values = [v for t in per.values() for v in t.values()]
    lo, hi = min(values), max(values)
    left.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="equal")
    left.set_xlabel(f"Kendall's tau on the trace: {first}")
    left.set_ylabel("Kendall's tau on the trace: other order")
    left.set_title(f"{len(per)} traces: each order against the served lengths", fontsize=9)
    left.legend(fontsize=6, loc="lower right")
    left.grid(alpha=0.3)
    summary = result["summary_weighted"]
    ys = list(range(len(names)))[::-1]
    means = [summary[n]["mean"] for n in names]
    cis = [summary[n]["t_ci"] or [summary[n]["mean"]] * 2 for n in names]
    right.errorbar(means, ys, xerr=[[m - c[0] for m, c in zip(means, cis, strict=True)],
                                    [c[1] - m for m, c in zip(means, cis, strict=True)]],
                   fmt="o", color="C0", capsize=3)
    fit = result.get("recovery_fit_weighted")
    if fit and fit.get("tau_for_0.6") is not None:
        right.axvline(fit["tau_for_0.6"], color="red", ls="--", lw=0.9,
                      label=f"0.6 of the oracle's gain by the fit ({fit['tau_for_0.6']:.3f})")
        right.legend(fontsize=7, loc="lower right")
    right.set_yticks(ys, [n if len(n) <= 60 else n[:57] + "..." for n in names], fontsize=6)
    right.set_xlabel("length-weighted tau, mean over traces (t 95 %)")
    right.grid(alpha=0.3)
    return save_png(fig, out_png)


def parser() -> argparse.ArgumentParser:
    p = parser_for(__doc__)
    p.add_argument("reports", nargs="+", type=Path, help="vllm_e2e.py JSON outputs: their traces are scored")
    p.add_argument("--data", type=Path, required=True, help="the val_data.json the experiments drew from")
    p.add_argument("--ranker-path", nargs="+", required=True, help="checkpoints; differences are against the first")
    p.add_argument("--ranker-name", nargs="+", default=None,
                   help="the encoder each was trained from: one for all or one per ranker (default, as for the "
                        "next three: each ranker's ranker_config.json, else the original release's)")
    p.add_argument("--ranker-max-length", type=int, nargs="+", help="one for all or one per ranker")
    p.add_argument("--ranker-truncation", nargs="+", choices=["head", "middle"], help="one for all or one per "
                   "ranker")
    p.add_argument("--ranker-pooling", nargs="+", choices=["pooler", "mean"], help="one for all or one per ranker")
    p.add_argument("--tfidf-train", type=Path, default=None, metavar="TRAIN_JSON",
                   help="also screen the TF-IDF + ridge baseline fitted on these rows (train_data.json): "
                        "tfidf_ridge")
    p.add_argument("--ensemble", action="append", metavar="A,B,...", help="also screen the mean of these rankers' "
                   "per-trace quantiles (names as printed, or all); repeat for several ensembles")
    p.add_argument("--recovery-fit", type=Path, default=None, metavar="POOL_JSON",
                   help="an e2e_pool.py JSON: a line of real recovery on the tau of the order sent, fitted over its "
                        "experiments, turns each ranker's mean trace tau into the recovery that line expects (a "
                        "model, not a measurement)")
    p.add_argument("--out", type=Path, default=None, help="JSON output, with a PNG beside it (default: print only)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    n = len(args.ranker_path)
    try:
        lengths = per_ranker(args.ranker_max_length, n, "--ranker-max-length")
        cuts = per_ranker(args.ranker_truncation, n, "--ranker-truncation")
        poolings = per_ranker(args.ranker_pooling, n, "--ranker-pooling")
        encoders = per_ranker(args.ranker_name, n, "--ranker-name")
        traces = read_traces(args.reports)
        rows = json.loads(args.data.read_text(encoding="utf-8"))
        prompts = prompts_of(traces, rows)
        train_rows = json.loads(args.tfidf_train.read_text(encoding="utf-8")) if args.tfidf_train else None
        pool = json.loads(args.recovery_fit.read_text(encoding="utf-8")) if args.recovery_fit else None
        fits = {"tau": recovery_fit(pool), "weighted": recovery_fit(pool, "weighted")} if pool else None
    except (OSError, ValueError, KeyError) as exc:
        p.error(str(exc))

    from scipy.stats import kendalltau

    from pars.eval.evaluate import short_names
    from pars.eval.rank_metrics import length_weighted_tau

    names = short_names(args.ranker_path) if n > 1 else [Path(args.ranker_path[0]).parent.name]
    try:  # checked before the scoring, which takes minutes
        ensembles = parse_ensembles(args.ensemble, [*names, *(["tfidf_ridge"] if train_rows is not None else [])])
    except ValueError as exc:
        p.error(str(exc))
    tfidf = None
    if train_rows is not None:  # fitted before the encoders score too: a bad train file fails in seconds
        from pars.eval.baselines import TfidfRidgeBaseline

        try:
            tfidf = TfidfRidgeBaseline().fit([r["prompt"] for r in train_rows],
                                             [r["answer_length"] for r in train_rows])
        except (KeyError, TypeError) as exc:
            p.error(f"--tfidf-train {args.tfidf_train}: rows need prompt and answer_length ({exc})")
    scores: dict[str, dict[str, list[float]]] = {key: {} for key in traces}
    for path, name, encoder, max_length, cut, pooling in zip(args.ranker_path, names, encoders, lengths, cuts,
                                                             poolings, strict=True):
        scorer = cpu_scorer(encoder, path, max_length, cut, pooling)
        for key in traces:
            scores[key][name] = scorer.score(prompts[key])
    if tfidf is not None:
        names = [*names, "tfidf_ridge"]
        for key in traces:
            scores[key]["tfidf_ridge"] = tfidf.score(prompts[key])
    for ens, members in ensembles.items():
        for key in traces:
            scores[key][ens] = np.mean([quantiles(scores[key][m]) for m in members], axis=0).tolist()
    names = [*names, *ensembles]
    taus: dict[str, dict[str, float]] = {key: {} for key in traces}
    weighted: dict[str, dict[str, float]] = {key: {} for key in traces}
    for key, trace in traces.items():
        for name in names:
            taus[key][name] = float(kendalltau(scores[key][name], trace["max_tokens"]).statistic)
            # the served lengths are capped already
            weighted[key][name] = length_weighted_tau(scores[key][name], trace["max_tokens"])
    summaries = {"tau": compare(taus, names), "weighted": compare(weighted, names)}
    for kind, fit in (fits or {}).items():
        fit["source"] = str(args.recovery_fit)
        for row in summaries[kind].values():
            row["recovery_expected"] = fit["intercept"] + fit["slope"] * row["mean"]
    result = {"what": "issue 6: each ranker's Kendall's tau-b on the vLLM experiments' traces (served lengths)",
              "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "rankers": names,
              "settings": [{"path": a, "encoder": e, "max_length": m or 128, "truncation": c or "head",
                            "pooling": pl or "pooler"}
                           for a, e, m, c, pl in zip(args.ranker_path, encoders, lengths, cuts, poolings, strict=True)],
              "tfidf_train": str(args.tfidf_train) if args.tfidf_train else None, "ensembles": ensembles,
              "traces": {k: t["file"] for k, t in traces.items()}, "per_trace": taus, "summary": summaries["tau"],
              "per_trace_weighted": weighted, "summary_weighted": summaries["weighted"],
              "recovery_fit": (fits or {}).get("tau"), "recovery_fit_weighted": (fits or {}).get("weighted")}
    print_taus(result, fits, args.recovery_fit)
    if args.out:
        write_json_atomic(result, args.out, indent=1)
        png = plot(result, args.out.with_suffix(".png"))
        print(f"wrote {args.out} and {png}")
    return 0


def print_taus(result: dict, fits: dict | None, pool_json: Path | None) -> None:
    """Per kind of tau: each trace's tau of every order, their means, the paired differences from the first,
    and with a recovery fit the recovery each mean tau would give."""
    names = result["rankers"]
    for kind, label, per, summary in (("tau", "tau", result["per_trace"], result["summary"]),
                                      ("weighted", "length-weighted tau", result["per_trace_weighted"],
                                       result["summary_weighted"])):
        print(f"\n{label} of each ranker's order against the served lengths")
        print(md_head(["trace", *names]))
        for key, row in per.items():
            print(f"| {key} | " + " | ".join(fmt(row[name], 3) for name in names) + " |")
        print(f"| mean over {len(per)} traces | " + " | ".join(fmt(summary[k]["mean"], 3) for k in names) + " |")
        for name in names[1:]:
            d = summary[name]["minus_first"]
            print(f"{name} - {names[0]}: {fmt(d['mean'], 3, signed=True)} "
                  f"{fmt_ci(d['t_ci'], 3, signed=True, missing='n/a')} (t 95 % over traces), higher on "
                  f"{d['traces_higher']} of {d['traces']}")
        if fits:
            fit = fits[kind]
            print(f"recovery = {fit['intercept']:.3f} + {fit['slope']:.3f} x {label} of the order sent (r = "
                  f"{fit['r']:.2f} over {fit['experiments']} experiments of {pool_json.name}; a fit, not a "
                  "measurement): " + ", ".join(f"{k} {summary[k]['recovery_expected']:.3f}" for k in names)
                  + f"; 0.6 needs a mean trace {label} of {fit['tau_for_0.6']:.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
