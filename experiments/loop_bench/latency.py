"""The latency phase: per seed one trace of later turns no other phase sent, replayed by vLLM's own benchmark
client through the four gateways exactly as experiments.vllm_bench replays its (warm-up of the quantile
windows, capacity measured, rate = load factor x capacity, Poisson arrivals from the seed, the same for every
policy, the order rotated per seed); pooled over seeds with t 95 % intervals."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.lib.bench_client import check_lengths, client_argv, summarize, write_dataset
from experiments.lib.stats import over_traces
from experiments.lib.traces import Request, digest
from experiments.loop_bench.servers import POLICIES
from experiments.vllm_bench import METRICS, fill_oracle_window, policy_order, run_client

RATIOS = ("ratio_old_fcfs", "ratio_new_fcfs", "ratio_oracle_fcfs", "ratio_new_old", "recovery_old", "recovery_new")


def order_for(seed_index: int) -> list[str]:
    """The four runs' order for the seed_index-th seed, rotated by one per seed (vllm_bench's rule)."""
    return policy_order(seed_index, POLICIES)


def seed_ratios(runs: dict[str, dict]) -> dict[str, float]:
    """Mean end-to-end latency over FCFS's for pars-old, pars-new and the oracle, pars-new over pars-old, and
    the share of the oracle's gain each ranker recovers, (fcfs - pars) / (fcfs - oracle) (nan when the oracle
    gained nothing)."""
    f, old, new, o = (runs[n]["summary"]["e2el_mean_s"] for n in POLICIES)

    def recovery(p: float) -> float:
        return (f - p) / (f - o) if f != o else float("nan")

    return {"ratio_old_fcfs": old / f, "ratio_new_fcfs": new / f, "ratio_oracle_fcfs": o / f,
            "ratio_new_old": new / old, "recovery_old": recovery(old), "recovery_new": recovery(new)}


def pool(per_seed: Sequence[dict]) -> dict[str, Any]:
    """Over seeds (one trace each): each policy's figures and the ratios, each as count, mean and t 95 %."""
    out: dict[str, Any] = {n: {m: over_traces([s["runs"][n]["summary"][m] for s in per_seed]) for m in METRICS}
                           for n in POLICIES}
    for key in RATIOS:
        out[key] = over_traces([s[key] for s in per_seed])
    return out


def run_seed(args: argparse.Namespace, k: int, seed: int, trace: list[Request], skipped: dict[str, int],
             urls: dict[str, str], model: str, client_dir: Path, log_dir: Path) -> dict[str, Any]:
    """Warm-up, capacity and one client run per policy for one seed's trace; its record."""
    from experiments.vllm_e2e.client import gateway_health, new_fallbacks, prime
    from experiments.vllm_e2e.policies import Policy

    dataset = write_dataset(trace, client_dir / f"seed{seed}.jsonl")
    expected = [r.max_tokens for r in trace]
    mean_tokens = float(np.mean(expected))
    print(f"seed {seed}: {len(trace)} prompts, output_tokens mean {mean_tokens:.1f}, "
          f"{sum(r.answer_tokens > r.max_tokens for r in trace)} capped; warming up", flush=True)
    started_at = time.time()
    scored = ("pars-old", "pars-new", "oracle")
    before = {n: gateway_health(urls[n])["scores_in_window"] for n in scored}
    # Each prompt once through both pars gateways (1 token): both rankers' windows warm, vLLM's prefix cache too
    asyncio.run(prime([Policy(n, urls[n], "gateway") for n in ("pars-old", "pars-new")], trace, model))
    fill_oracle_window(urls["oracle"], trace, model)
    filled = {n: gateway_health(urls[n])["scores_in_window"] - before[n] for n in scored}
    capacity = None
    rate = args.request_rate
    if rate is None:
        name = f"seed{seed}_capacity.json"
        argv = client_argv(args.vllm_python, urls["vllm"], model, dataset, args.capacity_prompts, float("inf"), seed,
                           client_dir, name, output_len=args.capacity_tokens)
        res = run_client(args, argv, client_dir / name, log_dir / f"client_seed{seed}_capacity.log")
        check_lengths(res, [args.capacity_tokens] * args.capacity_prompts, f"seed {seed} capacity burst")
        capacity = {"result_file": str(client_dir / name), "prompts": args.capacity_prompts,
                    "tokens_each": args.capacity_tokens, "seconds": res["duration"],
                    "output_tokens_per_s": res["output_throughput"],
                    "requests_per_s": res["output_throughput"] / mean_tokens}
        rate = round(args.load_factor * capacity["requests_per_s"], 4)
        print(f"seed {seed}: capacity {res['output_throughput']:.0f} tokens/s = {capacity['requests_per_s']:.3f} "
              f"requests/s of this trace; rate {rate}/s", flush=True)
    order = order_for(k)
    runs = {}
    for i, pol in enumerate(order):
        if i or capacity:
            time.sleep(args.cooldown_s)
        name = f"seed{seed}_{pol}.json"
        argv = client_argv(args.vllm_python, urls[pol], model, dataset, len(trace), rate, seed, client_dir, name)
        h0 = gateway_health(urls[pol])
        t0 = time.monotonic()
        res = run_client(args, argv, client_dir / name, log_dir / f"client_seed{seed}_{pol}.log")
        wall = time.monotonic() - t0
        h1 = gateway_health(urls[pol])
        check_lengths(res, expected, f"seed {seed} {pol}")
        runs[pol] = {"result_file": str(client_dir / name), "wall_s": round(wall, 1), "summary": summarize(res),
                     "fallbacks": new_fallbacks(h0, h1), "argv": argv[3:]}
        s = runs[pol]["summary"]
        print(f"seed {seed} {pol}: e2el mean {s['e2el_mean_s']:.2f} s, p99 {s['e2el_p99_s']:.2f} s, TPOT mean "
              f"{s['tpot_mean_ms']:.1f} ms ({res['duration']:.0f} s)", flush=True)
    return {"seed": seed, "order": order, "rate": rate, "capacity": capacity, "dataset": str(dataset),
            "started_at_unix": started_at,
            "trace": {"n": len(trace), "skipped": skipped, "ids_sha": digest([r.id for r in trace]),
                      "output_tokens_mean": mean_tokens, "output_tokens_sum": int(sum(expected)),
                      "capped": sum(r.answer_tokens > r.max_tokens for r in trace)},
            "warm_windows": filled, "runs": runs, **seed_ratios(runs)}
