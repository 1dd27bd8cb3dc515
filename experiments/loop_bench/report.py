"""The report: the Markdown tables (live ranking quality before and after, the loop's decision, latency per seed
and pooled) and the PNG (mean latency over FCFS's before and after the loop, live tau before and after)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.lib.reports import fmt, fmt_ci, md_head, tight_figure
from experiments.loop_bench.latency import RATIOS
from experiments.loop_bench.servers import POLICIES
from experiments.vllm_bench import METRICS

RATIO_NAMES = {"ratio_old_fcfs": "pars-old / fcfs", "ratio_new_fcfs": "pars-new / fcfs",
               "ratio_oracle_fcfs": "oracle / fcfs", "ratio_new_old": "pars-new / pars-old",
               "recovery_old": "recovery old", "recovery_new": "recovery new"}


def _ci(low: float | None, high: float | None) -> list[float] | None:
    """[low, high] when both are finite numbers (a degenerate bootstrap gives NaN), else None."""
    ok = all(isinstance(x, int | float) and math.isfinite(x) for x in (low, high))
    return [low, high] if ok else None


def _tau_cell(t: dict | None, key: str) -> str:
    if not t:
        return ""
    return f"{fmt(t.get(key), 3)} {fmt_ci(t.get(key + '_ci95'), 3)}".strip()


def _gauges(live: dict | None) -> str:
    """The gateway's own live figures, as /gateway/health gives them (NaN/None: no comparable pair)."""
    h = ((live or {}).get("health") or {}).get("live")
    if not h:
        return "none" if not (live or {}).get("error") else f"unread ({live['error'][:60]})"
    return (f"tau {fmt(h.get('kendall_tau'), 3, missing='n/a')}, weighted "
            f"{fmt(h.get('length_weighted_tau'), 3, missing='n/a')} over {h.get('requests')} requests "
            f"({h.get('censored')} censored, {h.get('comparable_pairs')} comparable pairs)")


def tau_table(report: dict[str, Any]) -> str:
    lines = [md_head(["live traffic", "ranker", "requests", "Kendall tau [95% bootstrap]",
                      "length-weighted tau [95%]", "mean tokens", "gateway's own gauges"])]
    for phase in ("record", "after"):
        p = report.get(phase) or {}
        t = p.get("taus")
        lines.append(f"| {phase} | {p.get('ranker_id', '')} | {t['n'] if t else 0} | {_tau_cell(t, 'kendall_tau')} | "
                     f"{_tau_cell(t, 'length_weighted_tau')} | {fmt((t or {}).get('mean_length'), 1)} | "
                     f"{_gauges(p.get('gateway_live'))} |")
    d = (report.get("after") or {}).get("difference")
    if d:
        k, w = d["kendall_tau"], d["length_weighted_tau"]
        lines.append(f"| after - before | | | {fmt(k['difference'], 3, True)} {fmt_ci(k['ci95'], 3, True)} | "
                     f"{fmt(w['difference'], 3, True)} {fmt_ci(w['ci95'], 3, True)} | | |")
    trained = report.get("ranker_trained_on")
    if trained:
        lines.append(f"| its own val set (first turns, characters) | | | {fmt(trained.get('val_kendall_tau'), 3)} | "
                     f"{fmt(trained.get('val_length_weighted_tau'), 3)} | | |")
    blind = [(((report.get(p) or {}).get("gateway_live") or {}).get("health") or {}).get("live") or {}
             for p in ("record", "after")]
    if any(b.get("requests") and not b.get("comparable_pairs") for b in blind):
        lines += ["", "The gateway's own gauges have no comparable pair: every answer here ends at its max_tokens (its "
                  "true length, by construction), which the gateway counts as censored, and it leaves out pairs of "
                  "two censored answers. The taus beside them count completion_tokens as the true lengths they are."]
    return "\n".join(lines)


def loop_table(report: dict[str, Any]) -> str:
    loop = report.get("loop") or {}
    cycle = loop.get("cycle") or {}
    d = cycle.get("decision") or {}
    o = loop.get("outcome") or {}
    lines = [f"The loop (`pars.retrain.cycle`, exit {cycle.get('returncode')}, {fmt(cycle.get('wall_s'), 0)} s): "
             f"{o.get('action') or 'no decision'}; reloaded: {o.get('reloaded')} (ranker {o.get('ranker_id_before')} "
             f"-> {o.get('ranker_id_after')})" + (f"; **{o['inconsistent']}**" if o.get("inconsistent") else "")]
    if not o.get("reloaded"):
        lines.append("Not reloaded: predictor A still serves the deployed ranker, so pars-new is pars-old's ranker "
                     "and the after phase measures the same ranker on new prompts.")
    if d:
        def diff(x: dict | None) -> str:
            x = x or {}
            return f"{fmt(x.get('difference'), 4, True)} {fmt_ci(_ci(x.get('ci95_low'), x.get('ci95_high')), 4, True)}"

        lines += ["", md_head(["held-out prompts", "ranker", "tau", "length-weighted tau"])]
        for name in ("deployed", "candidate"):
            m = d.get(name) or {}
            lines.append(f"| {d.get('prompts')} | {name} | {fmt(m.get('kendall_tau'), 4)} | "
                         f"{fmt(m.get('length_weighted_tau'), 4)} |")
        lines.append(f"| | candidate - deployed | {diff(d.get('tau_difference'))} | "
                     f"{diff(d.get('length_weighted_tau_difference'))} |")
    return "\n".join(lines)


def latency_tables(per_seed: Sequence[dict], pooled: dict) -> str:
    if not per_seed:
        return "No latency runs."
    lines = [md_head(["seed", "rate/s", "order", *(f"{n} e2el mean s" for n in POLICIES)])]
    for s in per_seed:
        lines.append(f"| {s['seed']} | {s['rate']:g} | {' '.join(s['order'])} | " + " | ".join(
            fmt(s["runs"][n]["summary"]["e2el_mean_s"], 2) for n in POLICIES) + " |")
    lines.append("| mean (t 95%) | | | " + " | ".join(
        f"{fmt(pooled[n]['e2el_mean_s']['mean'], 2)} {fmt_ci(pooled[n]['e2el_mean_s']['t_ci'])}".strip()
        for n in POLICIES) + " |")
    lines += ["", md_head(["seed", *(RATIO_NAMES[k] for k in RATIOS)])]
    for s in per_seed:
        lines.append(f"| {s['seed']} | " + " | ".join(fmt(s[k], 3) for k in RATIOS) + " |")
    lines.append(f"| mean (t 95%) over {len(per_seed)} | " + " | ".join(
        f"{fmt(pooled[k]['mean'], 3)} {fmt_ci(pooled[k]['t_ci'], 3)}".strip() for k in RATIOS) + " |")
    lines += ["", md_head(["policy", *METRICS])]
    for n in POLICIES:
        lines.append(f"| {n} | " + " | ".join(fmt(pooled[n][m]["mean"], 1 if m.endswith("ms") else 2)
                                             for m in METRICS) + " |")
    taus = [(s["seed"], s.get("trace_taus")) for s in per_seed if s.get("trace_taus")]
    if taus:
        lines += ["", md_head(["seed", "prompts", "tau pars-old", "tau pars-new", "new - old [paired 95%]"])]
        for seed, t in taus:
            d = t["difference"]
            lines.append(f"| {seed} | {t['prompts']} | {fmt(t['pars-old'], 3)} | {fmt(t['pars-new'], 3)} | "
                         f"{fmt(d['difference'], 3, True)} {fmt_ci(_ci(d['ci95_low'], d['ci95_high']), 3, True)} |")
    return "\n".join(lines)


def table(report: dict[str, Any]) -> str:
    lat = report.get("latency") or {}
    return "\n\n".join([tau_table(report), loop_table(report),
                        latency_tables(lat.get("per_seed") or [], lat.get("pooled") or {})])


def _err(mean: float | None, ci: Sequence[float] | None) -> list[list[float]] | None:
    if mean is None or not ci:
        return None
    return [[mean - ci[0]], [ci[1] - mean]]


def plot(report: dict[str, Any], path: Path, title: str) -> None:
    """Left: pooled mean latency over FCFS's of pars-old (before), pars-new (after) and the oracle, t 95 % over
    seeds, each seed a dot. Right: the live traffic's tau and length-weighted tau before and after the loop,
    bootstrap 95 % over requests."""
    fig = tight_figure(9.0, 4.0)
    left, right = fig.subplots(1, 2)
    lat = report.get("latency") or {}
    per_seed, pooled = lat.get("per_seed") or [], lat.get("pooled") or {}
    keys = [("ratio_old_fcfs", "pars-old\n(before)"), ("ratio_new_fcfs", "pars-new\n(after)"),
            ("ratio_oracle_fcfs", "oracle")]
    for i, (key, label) in enumerate(keys):
        q = pooled.get(key) or {}
        if q.get("mean") is None:
            continue
        left.bar(i, q["mean"], 0.6, color=f"C{i}", label=label)
        err = _err(q["mean"], q.get("t_ci"))
        if err:
            left.errorbar(i, q["mean"], yerr=err, color="k", capsize=4)
        left.scatter([i] * len(per_seed), [s[key] for s in per_seed], color="k", s=10, zorder=3)
    left.axhline(1.0, color="grey", lw=0.8, ls="--")
    left.set_xticks(range(len(keys)), [lb for _, lb in keys])
    left.set_ylabel("mean end-to-end latency / FCFS's")
    left.set_title(f"latency, {len(per_seed)} trace(s), t 95 %", fontsize=9)
    left.grid(axis="y", alpha=0.3)
    width = 0.35
    for j, phase in enumerate(("record", "after")):
        t = (report.get(phase) or {}).get("taus") or {}
        xs = np.arange(2) + (j - 0.5) * width
        for x, key in zip(xs, ("kendall_tau", "length_weighted_tau"), strict=True):
            v = t.get(key)
            if v is None or not np.isfinite(v):
                continue
            right.bar(x, v, width, color=f"C{j}", label=("before" if j == 0 else "after") if key == "kendall_tau"
                      else None)
            err = _err(v, t.get(key + "_ci95"))
            if err:
                right.errorbar(x, v, yerr=err, color="k", capsize=4)
    right.set_xticks(range(2), ["Kendall tau", "length-weighted tau"])
    right.set_ylabel("live: score vs completion tokens")
    right.set_title("live ranking quality, bootstrap 95 %", fontsize=9)
    right.legend(fontsize=8)
    right.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_outputs(report: dict[str, Any], out: Path) -> str:
    """The JSON, the .md and the .png; the .md's text."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    text = table(report)
    out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    cfg = report.get("config") or {}
    plot(report, out.with_suffix(".png"),
         f"the loop on later ShareGPT turns: {cfg.get('record_requests')} recorded, {cfg.get('after_requests')} "
         f"after; latency {cfg.get('num_prompts')} prompts x {len(cfg.get('seeds') or [])} seeds, load "
         f"{cfg.get('load_factor')}; {report.get('started_at', '')}")
    return text
