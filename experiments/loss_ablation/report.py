"""The report: the Markdown beside the JSON (per unit a table of the cells, the scheduling value by window, and
which of the paper's claims hold) and the PNG (per unit: each cell's tau with its seeds, and the interval of its
difference from the reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.lib.reports import fmt, fmt_ci, md_head
from experiments.loss_ablation.evaluate import METRICS
from pars.common.figures import new_figure, save_png
from pars.common.jsonio import write_json_atomic

NAMES = {"kendall_tau": "Kendall tau", "length_weighted_tau": "weighted tau", "pairwise_accuracy": "accuracy"}
TABLE_HEAD = ["cell", "seeds", "steps", "tau (sd)", "Δ tau vs ref [95% CI]", "weighted tau (sd)", "Δ [95% CI]",
              "accuracy (sd)", "Δ [95% CI]"]


def _mean_sd(m: dict[str, Any]) -> str:
    sd = f" ({fmt(m['sd'], 3)})" if m.get("sd") is not None else ""
    return fmt(m.get("mean"), 3, missing="n/a") + sd


def _delta(d: dict[str, Any] | None) -> str:
    if not d:
        return ""
    text = f"{fmt(d['difference'], 3, signed=True, missing='n/a')} {fmt_ci(d['ci95'], 3, signed=True)}".strip()
    if d.get("seeds_above"):
        k, n = d["seeds_above"]
        text += f" ↑{k}/{n}"
    return text


def _over(v: dict[str, Any] | None, signed: bool = False) -> str:
    if not v or v.get("mean") is None:
        return ""
    return f"{fmt(v['mean'], 3, signed)} {fmt_ci(v.get('t_ci'), 3, signed)}".strip()


def cell_table(unit: dict[str, Any], headline_w: str, screened: bool) -> str:
    head = [*TABLE_HEAD, f"recovery W={headline_w} s [t 95%]", "Δ recovery [t 95%]"]
    if screened:
        head += ["trace tau [t 95%]"]
    lines = [md_head(head)]
    for c in unit["cells"]:
        rec = (c.get("recovery") or {}).get(headline_w)
        steps = [x for x in c.get("steps") or [] if x is not None]
        cols = [c["cell"] + (" (ref)" if c["reference"] else ""), str(len(c["seeds"])),
                f"{sum(steps) / len(steps):.0f}" if steps else ""]
        for m in METRICS:
            cols += [_mean_sd(c["metrics"][m]), _delta((c.get("minus_reference") or {}).get(m))]
        cols += [_over(rec), _over((rec or {}).get("minus_reference"), signed=True)]
        if screened:
            cols += [_over(c.get("trace_tau"))]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def window_table(unit: dict[str, Any], windows: list[str]) -> str:
    lines = [md_head(["cell", *(f"W={w} s" for w in windows)])]
    for c in unit["cells"]:
        rec = c.get("recovery") or {}
        lines.append(f"| {c['cell']} | " + " | ".join(_over(rec.get(w)) for w in windows) + " |")
    return "\n".join(lines)


def claims_text(unit: dict[str, Any]) -> str:
    lines = []
    for cl in unit["claims"]:
        if "missing" in cl:
            lines.append(f"- {cl['claim']}: not in this grid ({cl['missing']} has no finished run).")
            continue
        parts = [f"{NAMES[m]} {d['verdict']} ({_delta(d)})" for m, d in cl["metrics"].items()]
        lines.append(f"- {cl['claim']}: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    cfg, b, s = result["config"], result["budget"], result["scheduling"]
    windows = [f"{w:g}" for w in s["settings"]["windows"]]
    headline = s["headline_window"]
    out = [
        "# Loss ablation (issue 32): pairwise vs listwise vs pointwise vs classification, and the δ filter", "",
        f"Budget: every run trained for {b['minutes_per_run']:g} min of wall clock ({b['note']}), "
        f"CPU threads {b['threads']} (OMP_NUM_THREADS), device {cfg['device']}, mixed precision "
        f"{', '.join(b['mixed_precision']) or 'n/a'}. Encoder {cfg['model_name']}, pooling {cfg['pooling']}, "
        f"truncation {cfg['truncation']}, max length {cfg['max_length']}, batch {cfg['batch_size']} (rows for "
        f"in-batch, pairs for pair files), learning rate {cfg['learning_rate']:g}, warm-up ratio "
        f"{cfg['warmup_ratio']:g}; seeds {', '.join(map(str, cfg['seeds']))}; scored with each run's "
        f"{cfg['checkpoint']}_model.pt.",
        f"Machine: {result['machine']['cpus']} CPUs, load average {result['machine']['load_avg_before']} before, "
        f"{result['machine'].get('load_avg_after')} after; commit {result['git_commit']}.",
        "",
        "Steps: optimizer steps in the budget, mean over seeds (batches of rows for in-batch, of pairs for pair "
        "files). Metrics on each unit's val rows (taus) and val pairs at δ = 0.2 (accuracy): mean over seeds (sd over "
        "seeds). Δ = cell − reference (in-batch margin δ=0.2), over the seeds both have, with a paired bootstrap 95 % "
        "interval "
        f"({cfg['bootstrap']} resamples of the val rows for the taus, of the val pairs for the accuracy, the same "
        "for both cells; a resample's value is the mean over seeds; the seeds are fixed, so the interval is "
        "the val set's sampling only) and ↑k/n: in k of the n seeds the cell's run is above the reference's run "
        "of the same seed (for in-batch cells, the same batches in the same order). Recovery: the share of the "
        "oracle's mean-latency gain over FCFS in the scheduler model (experiments/lib/scheduler.py), gateway rule "
        f"pars@W, mean over load factors {', '.join(f'{x:g}' for x in s['settings']['load_factors'])} and "
        f"{s['settings']['traces']} traces of {s['settings']['num_requests']} val rows, t 95 % over traces; "
        f"served lengths: {s['served_lengths']}.",
    ]
    screened = bool(result.get("trace_screen", {}).get("traces"))
    if screened:
        out.append(f"Trace tau: Kendall tau on the {len(result['trace_screen']['traces'])} recorded real-vLLM "
                   "traces against their served lengths, mean over traces (t 95 % over traces).")
    for unit, u in result["units"].items():
        out += ["", f"## Unit `{unit}`: answer_length in {u['length_unit']} ({u['val_rows']} val rows, "
                    f"{u['val_pairs']} val pairs)", "", cell_table(u, headline, screened)]
        if u["missing_cells"]:
            out += ["", f"No finished run yet: {', '.join(u['missing_cells'])}."]
        if any(c.get("recovery") for c in u["cells"]):
            out += ["", "Recovery by window W (mean over load factors, t 95 % over traces):", "",
                    window_table(u, windows)]
        out += ["", "Which claims hold (from the paired intervals: \"holds\" when the interval of a − b is above 0, "
                    "\"does not hold\" when below):", "", claims_text(u)]
    return "\n".join(out) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path:
    """Per unit: left, each cell's Kendall tau, its seeds as dots and their mean as a bar; right, its difference
    from the reference with the paired bootstrap 95 % interval."""
    units = result["units"]
    n = max(len(u["cells"]) for u in units.values())
    fig = new_figure(11, 0.8 + 0.32 * n * len(units))
    axes = fig.subplots(len(units), 2, squeeze=False)
    for (unit, u), (left, right) in zip(units.items(), axes, strict=True):
        names = [c["cell"] + (" (ref)" if c["reference"] else "") for c in u["cells"]][::-1]
        cells = u["cells"][::-1]
        for y, c in enumerate(cells):
            m = c["metrics"]["kendall_tau"]
            left.scatter(m["per_seed"], [y] * len(m["per_seed"]), s=14, color="C0", alpha=0.7)
            if m["mean"] is not None:
                left.plot([m["mean"]] * 2, [y - 0.3, y + 0.3], color="C3" if c["reference"] else "k", lw=1.5)
            d = (c.get("minus_reference") or {}).get("kendall_tau")
            if d and d["difference"] is not None:
                ci = d["ci95"] or [d["difference"]] * 2
                right.errorbar([d["difference"]], [y], xerr=[[d["difference"] - ci[0]], [ci[1] - d["difference"]]],
                               fmt="o", color="C0", capsize=3)
        for ax in (left, right):
            ax.set_yticks(range(len(names)), names, fontsize=7)
            ax.grid(alpha=0.3)
        right.axvline(0, color="grey", lw=0.8, ls="--")
        left.set_xlabel(f"{unit}: Kendall tau on val (dots: seeds, bar: mean)", fontsize=8)
        right.set_xlabel(f"{unit}: Δ tau vs {u['reference']} (paired bootstrap 95 %)", fontsize=8)
    fig.suptitle(f"Loss ablation: {result['budget']['minutes_per_run']:g} min per run, "
                 f"{result['budget']['threads']} threads", fontsize=10)
    return save_png(fig, path)


def write_outputs(result: dict[str, Any], out: Path) -> tuple[Path, Path, Path]:
    write_json_atomic(result, out, indent=1)
    md = out.with_suffix(".md")
    md.write_text(markdown(result), encoding="utf-8")
    png = plot(result, out.with_suffix(".png"))
    return out, md, png
