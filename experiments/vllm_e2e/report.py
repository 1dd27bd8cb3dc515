"""What an experiment writes: the JSON, the markdown table beside it (with the guard's trade-off), the PNG,
and the probe's table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from experiments.lib.reports import fmt, fmt_ci, md_head, tight_figure


def write_outputs(report: dict, out: Path) -> str:
    """The JSON, the markdown table beside it and the PNG; returns the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    text = table(report["summary"])
    cap = report.get("capacity")
    if cap:
        drift = [round(r["trace_requests_per_s"], 3) for r in cap["per_repeat"]]
        text = (f"Capacity before the runs: {cap['tokens_per_s']:.0f} tokens/s = {cap['trace_requests_per_s']:.3f} "
                f"requests/s of this trace (before each repeat: {drift}); load factors "
                + ", ".join(f"{lf:g} at {rate}/s" for rate, lf in cap["load_factors"].items()) + ".\n\n" + text)
    if report["targets"]["guard_tradeoff"]:
        text += "\n\n" + md_head(["W s", "mean / fcfs", "p99 / fcfs", "TTFT p99 / fcfs", "gain kept vs largest W",
                                  "oracle gain recovered"]) + "\n" + "\n".join(
                    f"| {(t['ranker'] + ' ') if t.get('ranker') else ''}{t['window_s']:g} | "
                    f"{fmt(t['ratio_mean'], 3)} | {fmt(t['ratio_p99'], 3)} | "
                    f"{fmt(t.get('ratio_ttft_p99'), 3)} | {fmt(t['gain_kept_vs_largest_w'])} | "
                    f"{fmt(t['oracle_gain_recovered'])} |"
                    for t in report["targets"]["guard_tradeoff"])
    out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    plot(report["summary"], report["targets"]["guard_tradeoff"], out.with_suffix(".png"),
         f"{report['trace']['n']} requests x {len({r['repeat'] for r in report['runs']})} repeats, model "
         f"{report['servers']['model']}, {report['started_at']}")
    return text


def table(rows: Sequence[dict]) -> str:
    """The summary as a markdown table, a row per (rate, policy)."""
    lines = [md_head(["rate/s", "policy", "mean s", "p50 s", "p90 s", "p99 s", "per-token ms", "TTFT p50 s",
                      "TTFT p99 s", "req/s", "mean / fcfs (t 95%)", "p99 / fcfs", "oracle gain recovered (t 95%)",
                      "score ms p50", "errors"])]
    for r in rows:
        rm = r.get("ratio_mean")
        og = r.get("oracle_gain_recovered")
        lines.append(
            f"| {r['rate']:g} | {r['policy']} | {fmt(r['latency_mean_s'])} | {fmt(r['latency_p50_s'])} | "
            f"{fmt(r['latency_p90_s'])} | {fmt(r['latency_p99_s'])} | {fmt(r['per_token_mean_ms'], 1)} | "
            f"{fmt(r['ttft_p50_s']) or 'n/m'} | {fmt(r.get('ttft_p99_s')) or 'n/m'} | "
            f"{fmt(r['throughput_rps'], 3)} | "
            f"{(fmt(rm['mean'], 3) + ' ' + fmt_ci(rm['t_ci'], 3)) if rm else ''} | "
            f"{fmt(r['ratio_p99']['mean'], 3) if 'ratio_p99' in r else ''} | "
            f"{(fmt(og['mean'], 2) + ' ' + fmt_ci(og['t_ci'])) if og and og['mean'] is not None else ''} | "
            f"{fmt(r['score_ms_p50'], 1)} | {r['errors']} |")
    return "\n".join(lines)


def plot(rows: Sequence[dict], trade: Sequence[dict], path: Path, title: str) -> None:
    """Mean (t interval over repeats), p99 and per-token latency against the rate, one line per policy; with
    PARS windows, the guard's ratios to fcfs against W."""
    panels = 4 if trade else 3
    fig = tight_figure(5 * panels, 4.2)
    axes = fig.subplots(1, panels)
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    for p in policies:
        rs = sorted((r for r in rows if r["policy"] == p), key=lambda r: r["rate"])
        x = [r["rate"] for r in rs]
        mean = [r["latency_mean_s"] for r in rs]
        err = np.array([[m - (r["latency_mean_ci"] or [m, m])[0], (r["latency_mean_ci"] or [m, m])[1] - m]
                        for m, r in zip(mean, rs, strict=True)]).T
        axes[0].errorbar(x, mean, yerr=err, marker="o", capsize=3, label=p)
        axes[1].plot(x, [r["latency_p99_s"] for r in rs], marker="o", label=p)
        axes[2].plot(x, [r["per_token_mean_ms"] for r in rs], marker="o", label=p)
    for ax, label in zip(axes[:3], ["mean latency s (t 95% over repeats)", "p99 latency s",
                                    "mean per-token latency ms"], strict=True):
        ax.set_xlabel("arrival rate (requests/s)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if trade:
        for ranker in dict.fromkeys(t.get("ranker") for t in trade):
            ts = [t for t in trade if t.get("ranker") == ranker]
            tag = f" [{ranker}]" if ranker else ""
            w = [t["window_s"] for t in ts]
            axes[3].plot(w, [t["ratio_mean"] for t in ts], marker="o", label=f"mean / fcfs{tag}")
            axes[3].plot(w, [t["ratio_p99"] for t in ts], marker="s", label=f"p99 / fcfs{tag}")
        axes[3].axhline(1.0, color="grey", lw=0.8)
        axes[3].axhline(1.2, color="red", lw=0.8, ls="--", label="p99 target 1.2")
        axes[3].set_xscale("symlog", linthresh=1.0)
        axes[3].set_xlabel("GATEWAY_FAIRNESS_WINDOW_S (highest rate)")
        axes[3].set_ylabel("ratio to fcfs")
        axes[3].legend(fontsize=8)
        axes[3].grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def probe_table(result: dict | None) -> str:
    """The probe's figures: each gateway's latency, scoring time and own added latency against direct."""
    if not result:
        return "no probe (it needs a gateway among the policies)"
    lines = [f"idle probe, {result['requests_per_target']} sequential 1-token requests per target; "
             f"direct p50 {result['direct']['p50']:.2f} ms",
             md_head(["gateway", "latency p50 ms", "scoring p50 ms", "own overhead p50 / p90 ms"])]
    for name, r in result.items():
        if isinstance(r, dict) and "overhead_p50_ms" in r:
            lines.append(f"| {name} | {r['latency_ms']['p50']:.2f} | {r['score_ms_p50']:.2f} | "
                         f"{r['overhead_p50_ms']:.2f} / {r['overhead_p90_ms']:.2f} |")
    return "\n".join(lines)
