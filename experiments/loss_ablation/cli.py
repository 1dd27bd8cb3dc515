"""The flags, their checks, and the ablation: data per unit, the runs (each scored once trained), the cells, the
outputs."""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from experiments.lib.args import OneLineParser, floats, ints, parse_checked
from experiments.lib.paths import ROOT, RUNS
from experiments.loss_ablation import aggregate, data, evaluate, grid, report, runs, schedule, screen
from pars.common.hub import OFFLINE_ENCODER
from pars.common.processes import load_average

# the trainer's choices (pars.model.ranker.POOLINGS, pars.model.truncation.TRUNCATIONS, pars.model.precision.CHOICES),
# spelled out so that --help needs no torch; a test keeps them equal
POOLINGS, TRUNCATIONS, PRECISIONS = ("pooler", "mean"), ("head", "middle"), ("auto", "no", "fp16", "bf16")


def parser() -> OneLineParser:
    from experiments.loss_ablation import __doc__ as doc

    p = OneLineParser(prog="python -m experiments.loss_ablation", description=doc,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--train-data", type=Path, required=True, help="train_data.json of stage 1 (task_id, prompt, "
                   "answer_content, answer_length)")
    g.add_argument("--val-data", type=Path, required=True, help="val_data.json of stage 1")
    g.add_argument("--units", default="chars,tokens", help="length units, comma list of chars (the rows as given) "
                   "and tokens (answer_length recounted in --length-tokenizer's tokens) (default: %(default)s)")
    g.add_argument("--length-tokenizer", default=None, metavar="NAME_OR_DIR", help="the served model's tokenizer "
                   "(a local directory or hub id) for the tokens unit and the scheduler model's lengths; without "
                   "it the tokens unit is skipped (default: none)")
    g.add_argument("--deltas", default="0,0.1,0.2,0.3,0.5", help="δ of the margin cells and of the pair files "
                   "made, comma list in [0, 1) (default: %(default)s)")
    g.add_argument("--train-pairs-per-prompt", type=int, default=10, help="pairs drawn per train row in each pair "
                   "file, as stage 1's --train-num-pairs (default: %(default)s)")
    g.add_argument("--val-pairs-per-prompt", type=int, default=10, help="pairs per val row (default: %(default)s)")
    g.add_argument("--pair-seed", type=int, default=42, help="seed of the train pairs (val: +1), as stage 1's "
                   "--seed (default: %(default)s)")
    g = p.add_argument_group("the grid")
    g.add_argument("--cells", default="all", help="comma list of all, a family (in-batch, pair-files: its cells at "
                   "--deltas) or FAMILY:LOSS[:δ] items (in-batch:margin:0.2, in-batch:listmle, pair-files:margin:0); "
                   "the reference in-batch:margin:0.2 is always added (default: %(default)s)")
    g.add_argument("--seeds", type=ints, default=[0, 1, 2], help="training seeds, comma list (default: 0,1,2)")
    g = p.add_argument_group("training (every run alike; the trainer's flags)")
    g.add_argument("--budget-minutes", type=float, default=2.0, help="wall-clock training budget of every run, "
                   "the trainer's --max-train-minutes (default: %(default)s)")
    g.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="CPU threads of every run "
                   "(OMP_NUM_THREADS) and of the scoring (default: the CPUs this process may use, %(default)s)")
    g.add_argument("--model-name", default=OFFLINE_ENCODER, help="encoder: hub id, local directory or "
                   f"{OFFLINE_ENCODER} (default: %(default)s)")
    g.add_argument("--pooling", choices=POOLINGS, default="mean", help="(default: %(default)s)")
    g.add_argument("--truncation", choices=TRUNCATIONS, default="middle", help="(default: %(default)s)")
    g.add_argument("--max-length", type=int, default=128, help="tokens per prompt (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=64, help="rows per step for in-batch, pairs per step for pair "
                   "files (default: %(default)s)")
    g.add_argument("--learning-rate", type=float, default=5e-5, help="(default: %(default)s)")
    g.add_argument("--num-epochs", type=int, default=100, help="an upper bound: the budget ends every run first "
                   "(default: %(default)s)")
    g.add_argument("--warmup-ratio", type=float, default=0.0, help="the trainer's warm-up share of the schedule, "
                   "which spans --num-epochs: 10 %% of 100 epochs would keep a 2-minute run in warm-up, near a 0 "
                   "learning rate, so none by default (the rate then decays from --learning-rate over --num-epochs, "
                   "about constant within the budget) (default: %(default)s)")
    g.add_argument("--mixed-precision", choices=PRECISIONS, default="auto", help="(default: %(default)s)")
    g.add_argument("--device", default="cpu", help="the trainer's --device (default: %(default)s)")
    g.add_argument("--trainer-arg", action="append", default=[], metavar="ARG", help="one more trainer argument, as "
                   "is (repeat; --trainer-arg=--max-steps=3 for one that starts with a dash)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--checkpoint", choices=("best", "last"), default="best", help="which checkpoint of a run is "
                   "scored: best (picked by val accuracy on the δ=0.2 val pairs) or last (default: %(default)s)")
    g.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples (default: %(default)s)")
    g.add_argument("--bootstrap-seed", type=int, default=0, help="(default: %(default)s)")
    g.add_argument("--score-batch-size", type=int, default=64, help="(default: %(default)s)")
    g = p.add_argument_group("scheduling value (experiments/sched_sim.py's model and defaults)")
    g.add_argument("--num-requests", type=int, default=80, help="requests per trace (default: %(default)s)")
    g.add_argument("--traces", type=int, default=30, help="traces, seeds 0..N-1 (default: %(default)s)")
    g.add_argument("--load-factors", type=floats, default=list(schedule.DEFAULT_LOAD_FACTORS),
                   help="offered rate / capacity, comma list (default: 0.8,1,1.2,1.5,2)")
    g.add_argument("--windows", type=floats, default=list(schedule.DEFAULT_WINDOWS), help="the gateway's W, "
                   "seconds, comma list; the table's recovery column is the largest (default: 5,20,60,1000)")
    g.add_argument("--max-num-seqs", type=int, default=8, help="the model's running slots (default: %(default)s)")
    g.add_argument("--trace-reports", type=Path, nargs="*", default=[], help="vllm_e2e*.json or vllm_bench*.json "
                   "reports (experiments/runs/*/): each cell's tau on their traces (default: none, no screen)")
    g = p.add_argument_group("outputs")
    g.add_argument("--out", type=Path, default=None, help="the JSON, the .md and .png beside it (default: "
                   "experiments/runs/<UTC date>_loss_ablation/loss_ablation.json)")
    g.add_argument("--work-dir", type=Path, default=None, help="the units' data and the runs (default: <stem of "
                   "--out>_work/ beside --out, which .gitignore leaves out)")
    g.add_argument("--keep-checkpoints", action="store_true", help="keep each run's best_model.pt and "
                   "last_model.pt (~90 MB each for MiniLM); by default they are deleted once the run's scores are "
                   "cached, which is all the report needs (78 runs would hold 14 GB)")
    g.add_argument("--report-only", action="store_true", help="rebuild the outputs from the finished runs, "
                   "training none")
    return p


def check(args: argparse.Namespace) -> None:
    """What argparse cannot check; ValueError in one line naming the flag."""
    for flag, path in (("--train-data", args.train_data), ("--val-data", args.val_data),
                       *(("--trace-reports", r) for r in args.trace_reports)):
        if not path.is_file():
            raise ValueError(f"{flag} {path}: no such file")
    if not args.budget_minutes > 0:
        raise ValueError(f"--budget-minutes must be > 0, got {args.budget_minutes:g}")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        raise ValueError("--seeds must be a comma list of distinct integers")
    args.units = [u.strip() for u in args.units.split(",") if u.strip()]
    if not args.units or not set(args.units) <= set(data.UNITS) or len(set(args.units)) != len(args.units):
        raise ValueError(f"--units must list some of {', '.join(data.UNITS)}, each once")
    args.deltas = grid.parse_deltas(args.deltas)
    args.cells = grid.parse_cells(args.cells, args.deltas)
    small = [f for f in ("threads", "bootstrap", "max_length", "batch_size", "num_epochs", "num_requests", "traces",
                         "max_num_seqs", "score_batch_size", "train_pairs_per_prompt", "val_pairs_per_prompt")
             if getattr(args, f) < 1]
    if small:
        raise ValueError(f"--{small[0].replace('_', '-')} must be at least 1")
    if not args.load_factors or not args.windows or min(args.load_factors) <= 0 or min(args.windows) < 0:
        raise ValueError("--load-factors must be positive and --windows non-negative (comma lists)")
    if not 0 <= args.warmup_ratio < 1:
        raise ValueError("--warmup-ratio must be in [0, 1)")


def git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def unignored_in_git(path: Path) -> bool:
    """Whether `path` lies in this repository without being git-ignored (the work dir holds GBs of checkpoints)."""
    try:
        path.relative_to(ROOT)
        # a file inside it: git matches a directory pattern (`*_work/`) only to a directory that exists
        done = subprocess.run(["git", "check-ignore", "-q", str(path / "run.json")], cwd=ROOT, capture_output=True,
                              timeout=10)
    except (ValueError, OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 1


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = parse_checked(p, argv, check)
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    out = (args.out or RUNS / f"{today}_loss_ablation" / "loss_ablation.json").resolve()
    work = (args.work_dir or out.with_name(f"{out.stem}_work")).resolve()
    if "tokens" in args.units and not args.length_tokenizer:
        print("unit tokens skipped: no --length-tokenizer to count the answers' tokens with")
        args.units.remove("tokens")
        if not args.units:
            p.error("no unit left: give --length-tokenizer for the tokens unit, or --units chars")
    if unignored_in_git(work):
        print(f"note: the work dir {work} is inside the repository and not git-ignored; it will hold every run's "
              "checkpoints (GBs): keep it out of commits (.gitignore) or give --work-dir elsewhere")
    import torch

    torch.set_num_threads(args.threads)
    started = time.monotonic()
    result: dict[str, Any] = {
        "what": "issue 32: pairwise vs listwise vs pointwise vs classification losses and the δ filter, equal "
                "wall-clock CPU budget per run",
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, "-m", "experiments.loss_ablation",
                               *(sys.argv[1:] if argv is None else argv)]),
        "git_commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
                    "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "load_avg_before": load_average()},
        "config": {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if k == "trace_reports"
                       else [c.spec for c in v] if k == "cells" else v) for k, v in vars(args).items()},
        "paths": {"out": str(out), "work": str(work)},
        "grid": {"cells": [c.name for c in args.cells], "reference": grid.REFERENCE.name, "seeds": args.seeds,
                 "units": args.units, "deltas": args.deltas}}

    source = data.Source(args.train_data, args.val_data)
    from pars.data.readers import load_rows
    from pars.data.token_lengths import load_length_tokenizer

    try:  # before the data and the runs: a report that does not fit --val-data fails at once
        recorded = (screen.read_trace_reports(args.trace_reports, load_rows(args.val_data, "--val-data"))
                    if args.trace_reports else {})
    except ValueError as exc:
        p.error(str(exc))

    tokenizer = functools.cache(lambda: load_length_tokenizer(args.length_tokenizer))
    unit_dirs = {u: work / "data" / u for u in args.units}
    pairs = {"train": args.train_pairs_per_prompt, "val": args.val_pairs_per_prompt, "seed": args.pair_seed}
    manifests = {u: data.prepare_unit(u, source, unit_dirs[u], grid.pair_file_deltas(args.cells, args.deltas), pairs,
                                      args.length_tokenizer, tokenizer) for u in args.units}
    settings = grid.TrainSettings(args.model_name, args.pooling, args.truncation, args.max_length, args.batch_size,
                                  args.learning_rate, args.num_epochs, args.warmup_ratio, args.budget_minutes,
                                  args.mixed_precision, args.device, tuple(args.trainer_arg))
    plan = runs.plan(unit_dirs, args.cells, args.seeds, work / "runs", settings,
                     {u: m["fingerprint"] for u, m in manifests.items()}, args.threads)
    vals = {u: evaluate.ValSet.load(unit_dirs[u]) for u in args.units}
    extra = screen.prompts_of(recorded)
    served = (data.prepare_served(work / "data" / data.SERVED, source, args.length_tokenizer, tokenizer)
              if args.length_tokenizer else None)
    served, served_what = data.served_lengths(served, args.length_tokenizer, unit_dirs)
    sched = schedule.SchedSettings(args.num_requests, args.traces, tuple(args.load_factors), tuple(args.windows),
                                   args.max_num_seqs)
    usable = set(served).intersection(*(v.ids for v in vals.values()))
    traces = schedule.draw_traces(served, usable, sched)
    base = schedule.baselines(traces, sched)
    evals: dict[tuple[str, grid.Cell], list[aggregate.RunEval]] = {}

    def judge(run: runs.Run) -> aggregate.RunEval:
        val = vals[run.unit]
        got = evaluate.score_run(run.dir, args.checkpoint, val, extra, args.score_batch_size)
        score_of = dict(zip(val.prompts, got["val"], strict=True)) | got["extra"]
        by_id = dict(zip(val.ids, got["val"], strict=True))
        return aggregate.RunEval(
            run.seed, run.summary(), evaluate.point(np.asarray(got["val"]), val),
            evaluate.run_draws(run.dir, args.checkpoint, got["val"], val, args.bootstrap, args.bootstrap_seed),
            schedule.cached_recovery(run.dir, args.checkpoint, by_id, traces, base, sched),
            screen.run_taus(score_of, recorded) if recorded else None)

    if args.report_only:
        print("--report-only: no training; reporting the finished runs")
    else:
        def judge_then_trim(run: runs.Run) -> None:
            judge(run)  # its scores, draws and scheduling value cached beside it
            if not args.keep_checkpoints:
                for ckpt in run.dir.glob("*_model.pt"):
                    ckpt.unlink()

        result["runs_done"] = runs.execute(plan, args.threads, args.budget_minutes, after=judge_then_trim)
    finished = [r for r in plan if r.finished()]
    if not finished:
        raise SystemExit(f"no finished run in {work / 'runs'} for these arguments: run without --report-only first")
    for k, run in enumerate(finished, start=1):
        print(f"\revaluating {k}/{len(finished)}: {run.label}", end="", flush=True)
        evals.setdefault((run.unit, run.cell), []).append(judge(run))
    print()
    result["machine"]["load_avg_after"] = load_average()
    result["budget"] = {"minutes_per_run": args.budget_minutes, "threads": args.threads,
                        "note": "the trainer's --max-train-minutes: its loop stops once this much time has passed "
                                "since training began; start-up, tokenizing, validation and saving are outside it",
                        "mixed_precision": sorted({e.summary.get("mixed_precision") or "?" for v in evals.values()
                                                   for e in v})}
    result["data"] = manifests
    result["scheduling"] = {"settings": {**vars(sched), "load_factors": list(sched.load_factors),
                                         "windows": list(sched.windows)},
                            "served_lengths": served_what, "headline_window": f"{max(sched.windows):g}",
                            "traces": [t.ids for t in traces],
                            "baselines_mean_s": {lf: {k: sum(v) / len(v) for k, v in b.items()}
                                                 for lf, b in base.items()}}
    result["trace_screen"] = {"traces": {k: t["file"] for k, t in recorded.items()}}
    result["runs"] = [e.summary for v in evals.values() for e in v]
    result["units"] = {}
    for u in args.units:
        by_cell = {c: evals.get((u, c), []) for c in args.cells}
        result["units"][u] = {"length_unit": manifests[u]["length_unit"], "val_rows": len(vals[u].prompts),
                              "val_pairs": len(vals[u].labels), **aggregate.unit_result(args.cells, by_cell)}
    result["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result["wall_s"] = round(time.monotonic() - started, 1)
    paths = report.write_outputs(result, out)
    print(report.markdown(result))
    print(f"wrote {', '.join(map(str, paths))}; data and runs in {work}")
    return 0
