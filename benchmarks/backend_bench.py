"""Inference backends side by side: throughput in process and ranking kept, per checkpoint.

For each checkpoint and backend (torch fp32, ONNX Runtime fp32, ONNX Runtime int8; torch-float16 and
torch-bfloat16, the service's PREDICTOR_DTYPE: weights cast on --device cuda; on CPU torch-bfloat16 is
bfloat16 autocast and torch-float16 is refused), scores the val prompts
in length-sorted batches of 64 (as the service and the evaluator do) and one prompt at a time, with the
backends interleaved within each repeat so machine load hits them alike. Reports prompts/s (median of
repeats), Kendall's tau-b of the scores against the true answer lengths, tau against torch fp32's scores,
and the largest score difference from torch fp32.

    .venv/bin/python benchmarks/backend_bench.py --data /tmp/sg/val_data.json \\
        --checkpoint runs/quickstart/best_model.pt runs/sg_inbatch_60m/best_model.pt

On a GPU, half precision against fp32 (ranking kept within the README's tolerance?):

    .venv/bin/python benchmarks/backend_bench.py --data /tmp/sg/val_data.json --device cuda \\
        --backends torch,torch-float16,torch-bfloat16 --checkpoint runs/sg_inbatch_60m/best_model.pt \\
        --out benchmarks/results/backend_bench_cuda

Prints a table, writes benchmarks/results/backend_bench.json and a PNG (throughput and tau per backend).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from pars.eval.rank_metrics import kendall_tau
from pars.model.backends import BACKENDS, load_inference_model
from pars.model.ranker import load_tokenizer
from pars.model.ranker_config import RankerConfig, resolve
from pars.model.scoring import PromptScorer
from pars.serving.settings import physical_cores

ROOT = Path(__file__).resolve().parents[1]

# torch at the service's PREDICTOR_DTYPE choices; "torch" (fp32) is the reference of every comparison
TORCH_DTYPES = {"torch": torch.float32, "torch-float16": torch.float16, "torch-bfloat16": torch.bfloat16}
CHOICES = tuple(dict.fromkeys((*BACKENDS, *TORCH_DTYPES)))


def make_scorer(backend: str, args, checkpoint: str, config: RankerConfig, tokenizer, cache: str) -> PromptScorer:
    """The checkpoint scored as its ranker config says (encoder, pooling, cut, length), on `backend`."""
    c = config
    if backend in TORCH_DTYPES:  # as the service does: weights cast on CUDA, bfloat16 autocast on CPU
        scorer = PromptScorer(load_inference_model(c.model_name, checkpoint, "torch", pooling=c.pooling), tokenizer,
                              max_length=c.max_length, device=args.device, truncation=c.truncation)
        scorer.set_dtype(TORCH_DTYPES[backend])
        return scorer
    model = load_inference_model(c.model_name, checkpoint, backend, cache, threads=args.threads,
                                 log=lambda m: print(m, flush=True), pooling=c.pooling)
    return PromptScorer(model, tokenizer, max_length=c.max_length, device="cpu", truncation=c.truncation)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="+", required=True, help="ranker checkpoints (best_model.pt)")
    p.add_argument("--model-name", default=None, help="the encoder, for checkpoints whose ranker_config.json "
                   "does not name it (default: as each checkpoint's config says)")
    p.add_argument("--data", type=Path, default=Path("/tmp/sg/val_data.json"), help="val_data.json rows")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated, from: " + ", ".join(CHOICES))
    p.add_argument("--device", default="cpu", help="device of the torch backends (ONNX Runtime runs on CPU)")
    p.add_argument("--max-prompts", type=int, default=None, help="the first N rows only (default: all)")
    p.add_argument("--max-length", type=int, default=None, help="default: as each checkpoint's config says")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the prompts, per backend")
    p.add_argument("--batch1-prompts", type=int, default=150, help="prompts timed one per forward pass")
    p.add_argument("--onnx-cache-dir", default=None, help="where exports are cached (default: a temp dir)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "backend_bench")
    args = p.parse_args(argv)
    args.threads = args.threads or physical_cores()
    torch.set_num_threads(args.threads)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in CHOICES]
    if unknown:
        p.error(f"--backends: unknown {', '.join(unknown)} (choose from {', '.join(CHOICES)})")
    if args.device != "cpu" and any(b not in TORCH_DTYPES for b in backends):
        p.error(f"--device {args.device}: ONNX Runtime backends run on CPU; list torch backends only")
    if args.device == "cpu" and "torch-float16" in backends:
        p.error("torch-float16 needs --device cuda (on CPU the service offers float32 and bfloat16)")
    rows = json.loads(args.data.read_text(encoding="utf-8"))[: args.max_prompts]
    prompts = [r["prompt"] for r in rows]
    lengths = [r["answer_length"] for r in rows]
    started = datetime.now(timezone.utc)
    print(f"{len(prompts)} prompts; {args.threads} threads; device {args.device}; loadavg {os.getloadavg()}",
          flush=True)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.onnx_cache_dir or tmp
        for checkpoint in args.checkpoint:
            config = resolve(checkpoint, {"model_name": args.model_name, "max_length": args.max_length},
                             name=lambda k: "--" + k.replace("_", "-"))
            tokenizer = load_tokenizer(config.model_name)
            scorers = {b: make_scorer(b, args, checkpoint, config, tokenizer, cache) for b in backends}
            for s in scorers.values():
                s.score_many(prompts[:128], batch_size=64)  # warm-up
            timings: dict[str, list[float]] = {b: [] for b in backends}
            single: dict[str, list[float]] = {b: [] for b in backends}
            loads = []
            scores: dict[str, list[float]] = {}
            for _ in range(args.repeats):  # interleaved: every backend once per repeat
                loads.append(os.getloadavg()[0])
                for b, s in scorers.items():
                    t0 = time.perf_counter()
                    scores[b] = s.score_many(prompts, batch_size=64)
                    timings[b].append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    for prompt in prompts[: args.batch1_prompts]:
                        s.score([prompt])
                    single[b].append(time.perf_counter() - t0)
            reference = scores.get("torch")
            for b in backends:
                r = {
                    "checkpoint": checkpoint, "backend": b, "ranker_config": config.to_dict(),
                    "prompts_per_s": len(prompts) / statistics.median(timings[b]),
                    "batch1_prompts_per_s": args.batch1_prompts / statistics.median(single[b]),
                    "seconds": timings[b], "batch1_seconds": single[b],
                    "kendall_tau_vs_lengths": kendall_tau(scores[b], lengths),
                    "loadavg_1min": loads,
                }
                if reference is not None:
                    r["kendall_tau_vs_torch_fp32"] = kendall_tau(scores[b], reference)
                    r["max_abs_diff_vs_torch_fp32"] = float(np.max(np.abs(np.subtract(scores[b], reference))))
                results.append(r)
            del scorers

    torch_rows = {r["checkpoint"]: r for r in results if r["backend"] == "torch"}
    header = (f"{'checkpoint':<36} {'backend':<14} {'prompts/s':>9} {'x torch':>7} {'batch1/s':>8} "
              f"{'tau(len)':>8} {'d tau':>7} {'tau(fp32)':>9} {'max|d|':>8}")
    print("\n" + header)
    for r in results:
        base = torch_rows.get(r["checkpoint"])
        r["speedup_vs_torch"] = r["prompts_per_s"] / base["prompts_per_s"] if base else None
        r["tau_delta_vs_torch"] = r["kendall_tau_vs_lengths"] - base["kendall_tau_vs_lengths"] if base else None
        print(f"{str(r['checkpoint'])[-36:]:<36} {r['backend']:<14} {r['prompts_per_s']:>9.1f} "
              f"{(r['speedup_vs_torch'] or float('nan')):>7.2f} {r['batch1_prompts_per_s']:>8.1f} "
              f"{r['kendall_tau_vs_lengths']:>8.4f} {(r['tau_delta_vs_torch'] or 0.0):>+7.4f} "
              f"{r.get('kendall_tau_vs_torch_fp32', float('nan')):>9.4f} "
              f"{r.get('max_abs_diff_vs_torch_fp32', float('nan')):>8.2e}")
    report = {
        "started_utc": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_end": os.getloadavg()},
        "prompts": len(prompts), "threads": args.threads, "device": args.device, "batch_size": 64,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checkpoints = list(dict.fromkeys(r["checkpoint"] for r in results))
    backends = list(dict.fromkeys(r["backend"] for r in results))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(checkpoints)
    for k, ckpt in enumerate(checkpoints):
        rs = [next(r for r in results if r["checkpoint"] == ckpt and r["backend"] == b) for b in backends]
        xs = np.arange(len(backends)) + k * width
        label = Path(ckpt).parent.name or str(ckpt)
        ax1.bar(xs, [r["prompts_per_s"] for r in rs], width, label=label)
        ax2.bar(xs, [r["kendall_tau_vs_lengths"] for r in rs], width, label=label)
    for ax, title in ((ax1, "prompts/s in process (batches of 64)"), (ax2, "Kendall's tau vs true lengths")):
        ax.set_xticks(np.arange(len(backends)) + width * (len(checkpoints) - 1) / 2, backends)
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
