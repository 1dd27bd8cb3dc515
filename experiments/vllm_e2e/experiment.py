"""One experiment: the trace built, the policies found (direct ones and one per gateway), the gateways primed
and probed, the capacity measured, then every (repeat, rate, policy) run interleaved, each saved as it ends."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from experiments.lib.harness import cpu_list
from experiments.lib.traces import Request, arrivals_at, build_trace, digest, prompt_rows, unit_gaps
from experiments.vllm_e2e.analysis import analyse, summarize_run
from experiments.vllm_e2e.client import (
    gateway_health,
    measure_capacity,
    model_name,
    new_fallbacks,
    prime,
    probe,
    run_cell,
)
from experiments.vllm_e2e.policies import BASELINE, DIRECT_POLICIES, Policy, gateway_policy, split_gateway
from experiments.vllm_e2e.watch import PredictorWatch
from pars.common.processes import load_average


def find_policies(vllm_url: str, gateway_urls: Sequence[str], only: str | None) -> list[Policy]:
    """The direct policies, and one per gateway (named from its /gateway/health), oracle-gw beside fcfs-gw;
    `only`: a comma list of the policies to keep. SystemExit when two gateways give one name or fcfs is left
    out."""
    policies = [Policy(name, vllm_url, "direct") for name in DIRECT_POLICIES]
    for spec in gateway_urls:
        ranker, url = split_gateway(spec)
        pol = gateway_policy(url, gateway_health(url), ranker)
        if any(p.name == pol.name for p in policies):
            raise SystemExit(f"two gateways give policy {pol.name}")
        policies.append(pol)
        if pol.name == "fcfs-gw":  # the oracle's priorities through the same proxy: the ceiling with its cost
            policies.append(Policy("oracle-gw", url, "gateway", pol.window_s, "none"))
    if only:
        wanted = [w.strip() for w in only.split(",")]
        policies = [p for p in policies if p.name in wanted]
    if BASELINE not in [p.name for p in policies]:
        raise SystemExit("the fcfs policy is the baseline every ratio is taken against: keep it")
    return policies


def experiment(args: argparse.Namespace, vllm_url: str, gateway_urls: Sequence[str]) -> dict:
    """The whole experiment as its report (JSON-ready); with --probe-only, the probe alone."""
    from transformers import AutoTokenizer

    if args.data is None or args.model_dir is None:
        raise SystemExit("--data and --model-dir are needed to build the trace")
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    rows = prompt_rows(args.data)
    trace, skipped = build_trace(rows, tokenizer, args.num_requests, args.seed, args.max_tokens_cap,
                                 args.max_model_len)
    gaps = unit_gaps(len(trace), args.seed)
    model = args.model or model_name(vllm_url)

    policies = find_policies(vllm_url, gateway_urls, args.policies)
    names = [p.name for p in policies]
    if args.client_nice:
        os.nice(args.client_nice)
    if args.side_cpus:  # once the servers are up, so that vLLM did not inherit the mask
        os.sched_setaffinity(0, cpu_list(args.side_cpus))

    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_start = load_average()
    pars_gateways = [p for p in policies if p.kind == "gateway" and p.scorer != "none"]
    if args.prime and pars_gateways and not args.probe_only:
        asyncio.run(prime(pars_gateways, trace, model))
    probe_result = None
    if args.probe and any(p.kind == "gateway" for p in policies):
        targets = {"direct": vllm_url, **{p.name: p.url for p in policies  # each gateway once
                                          if p.kind == "gateway" and p.name != "oracle-gw"}}
        probe_result = asyncio.run(probe(targets, model, args.probe, args.seed))
    capacity = rates_from_capacity(args, vllm_url, model, trace) if args.load_factors and not args.probe_only else None
    arrivals = {rate: arrivals_at(gaps, rate) for rate in args.rates}

    # Everything but the runs is known now: a crashed or stopped experiment leaves a partial JSON that
    # --report-from can analyse like a finished one.
    report = {
        "what": "issue 6 end-to-end: policies against vLLM's priority scheduler on a replayed ShareGPT trace",
        "started_at": started_at,
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_start": load_start},
        "note": args.note,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "servers": {"vllm_url": vllm_url, "model": model, "gateways": [
            {"policy": p.name, "url": p.url, "scorer": p.scorer, "fairness_window_s": p.window_s}
            for p in policies if p.kind == "gateway"]},
        "policies": names,
        "trace": {"n": len(trace), "skipped": skipped, "seed": args.seed, "max_tokens_cap": args.max_tokens_cap,
                  "ids": [r.id for r in trace], "prompt_tokens": [r.prompt_tokens for r in trace],
                  "answer_tokens": [r.answer_tokens for r in trace], "max_tokens": [r.max_tokens for r in trace],
                  "capped": sum(r.answer_tokens > r.max_tokens for r in trace),
                  "arrivals_s": {f"{rate:g}": a for rate, a in arrivals.items()},
                  "offered_tokens_per_s": {f"{rate:g}": rate * float(np.mean([r.max_tokens for r in trace]))
                                           for rate in args.rates}},
        "ttft": "measured (streaming)" if args.stream else "not measured: non-streaming requests",
        "probe": probe_result,
        "capacity": capacity,
    }
    if args.probe_only:
        report["machine"]["load_avg_end"] = load_average()
        return report
    runs = run_plan(args, vllm_url, model, policies, trace, arrivals, capacity, report)

    rows_out, targets = analyse(runs, names, args.rates, len(trace), args.bootstrap, args.seed, probe_result)
    report["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report["machine"]["load_avg_end"] = load_average()
    return {**report, "summary": rows_out, "targets": targets, "runs": runs}


def rates_from_capacity(args: argparse.Namespace, vllm_url: str, model: str, trace: Sequence[Request]) -> dict:
    """--load-factors: vLLM's capacity on this trace, measured now; sets args.rates to the load factors times
    it (recorded in the config, which --report-from reads back). Returns the capacity as the report keeps it."""
    # After priming and the probe, and after a burst that is not counted: measured first thing, before any
    # other traffic, it came out at 339 tokens/s against 480 a repeat later (run E's first try), and load
    # factor 1 offered a queue-less 0.7.
    warmup = asyncio.run(measure_capacity(vllm_url, model, trace, args.max_num_seqs, args.capacity_tokens))
    capacity = asyncio.run(measure_capacity(vllm_url, model, trace, args.max_num_seqs, args.capacity_tokens))
    args.rates = [round(lf * capacity["trace_requests_per_s"], 4) for lf in args.load_factors]
    capacity["load_factors"] = {f"{rate:g}": lf for rate, lf in zip(args.rates, args.load_factors, strict=True)}
    capacity["per_repeat"] = [{"repeat": 0, **{k: v for k, v in capacity.items() if k != "load_factors"}}]
    capacity["warmup_burst"] = warmup
    print(f"capacity: {capacity['tokens_per_s']:.0f} tokens/s = {capacity['trace_requests_per_s']:.3f} "
          f"requests/s of this trace; rates {args.rates}")
    return capacity


def run_plan(args: argparse.Namespace, vllm_url: str, model: str, policies: Sequence[Policy],
             trace: Sequence[Request], arrivals: dict[float, list[float]], capacity: dict | None,
             report: dict) -> list[dict]:
    """Every (repeat, rate, policy) run, the policy order rotated per repeat, the capacity measured again
    before each repeat (into `capacity`); each finished run saved with `report` beside --out as *.partial.json."""
    from tqdm import tqdm

    runs: list[dict] = []
    partial = Path(args.out).with_suffix(".partial.json")
    partial.parent.mkdir(parents=True, exist_ok=True)
    plan = [(rep, rate, policies[(k + rep) % len(policies)]) for rep in range(args.repeats) for rate in args.rates
            for k in range(len(policies))]  # policy order rotated per repeat: none is always first after a pause
    for order, (rep, rate, pol) in enumerate(tqdm(plan, desc="runs", disable=args.quiet)):
        if capacity is not None and order > 0 and plan[order - 1][0] != rep:
            again = asyncio.run(measure_capacity(vllm_url, model, trace, args.max_num_seqs, args.capacity_tokens))
            capacity["per_repeat"].append({"repeat": rep, **again})
        before = gateway_health(pol.url) if pol.kind == "gateway" else None
        with PredictorWatch(args.predictor_url) as watch:
            results, makespan = asyncio.run(run_cell(pol, trace, arrivals[rate], model, args.stream,
                                                     f"{pol.name} @ {rate:g}/s #{rep}", args.quiet))
        after = gateway_health(pol.url) if pol.kind == "gateway" else None
        runs.append({
            "rate": rate, "policy": pol.name, "repeat": rep, "order": order, "arrivals_sha": digest(arrivals[rate]),
            "trace_sha": digest([r.id for r in trace]),
            "fallbacks": after["fallbacks"] - before["fallbacks"] if before is not None else None,
            "fallbacks_by_reason": new_fallbacks(before, after) if before is not None else None,
            "predictor_watch": watch.summary(),
            "summary": summarize_run(results, trace, makespan, args.stream),
            "requests": [{"i": r.index, "sent_s": round(r.sent_s, 4), "lag_ms": round(r.lag_ms, 2),
                          "latency_s": r.latency_s, "ttft_s": r.ttft_s, "completion_tokens": r.completion_tokens,
                          "priority": r.priority, "source": r.source, "score_ms": r.score_ms, "error": r.error}
                         for r in results],
        })
        # An hour of runs is not lost to a crash near the end: every finished run is on disk.
        partial.write_text(json.dumps({**report, "plan_size": len(plan), "runs": runs}) + "\n", encoding="utf-8")
        if args.cooldown_s and order < len(plan) - 1:
            time.sleep(args.cooldown_s)
    return runs
