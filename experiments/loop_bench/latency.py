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

from experiments.lib.bench_client import write_dataset
from experiments.lib.stats import over_traces
from experiments.lib.traces import Request, digest
from experiments.loop_bench.servers import POLICIES
from experiments.vllm_bench import METRICS, fill_oracle_window, measure_rate, policy_order, replay

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
    from experiments.vllm_e2e.client import gateway_health, prime
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
    # The windows hold one trace (GATEWAY_QUANTILE_WINDOW = --num-prompts): full of exactly its scores now.
    filled = {n: {"before": before[n], "after": gateway_health(urls[n])["scores_in_window"]} for n in scored}
    capacity, rate = measure_rate(args, urls["vllm"], model, dataset, seed, mean_tokens, client_dir, log_dir)
    order = order_for(k)
    runs = replay(args, order, urls, model, dataset, len(trace), expected, rate, seed, client_dir, log_dir,
                  cooldown_first=capacity is not None)
    return {"seed": seed, "order": order, "rate": rate, "capacity": capacity, "dataset": str(dataset),
            "started_at_unix": started_at,
            "trace": {"n": len(trace), "skipped": skipped, "ids_sha": digest([r.id for r in trace]),
                      "output_tokens_mean": mean_tokens, "output_tokens_sum": int(sum(expected)),
                      "capped": sum(r.answer_tokens > r.max_tokens for r in trace)},
            "warm_windows": filled, "runs": runs, **seed_ratios(runs)}
