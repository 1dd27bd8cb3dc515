"""FCFS, PARS and the oracle compared with vLLM's own benchmark client (`vllm bench serve`), the policies set on
the gateway side; this tool only orchestrates, interleaves and pools (issue 29).

Three gateways in front of one `vllm serve --scheduling-policy priority`, each a policy:
  fcfs    GATEWAY_SCORER=none: priority = arrival time
  pars    GATEWAY_SCORER=remote: the ranker's score (via the predictor service), under the fairness window W
  oracle  GATEWAY_SCORER=max_tokens: the request's own max_tokens (= its exact answer length here) as its
          score, under the same W: the ceiling PARS is measured against
The client sends no priority, so each gateway sets it.

Per seed: the trace (--num-prompts rows of --data drawn with the seed; each request's output_tokens = its true
answer length in the served model's tokenizer, capped at --max-tokens-cap) is written as the client's custom
JSONL; each prompt goes once through the pars gateway with 1 output token (the ranker's quantile window and
vLLM's prefix cache warm for every policy) and its max_tokens once to the oracle gateway in a request vLLM
rejects (the oracle's quantile window warm too, no generation); the capacity is measured (the client at
--request-rate inf, --capacity-prompts of the trace with --capacity-tokens each, straight to vLLM) unless
--request-rate is given, and rate = --load-factor x capacity; then the client replays the trace once per
policy at that rate with Poisson arrivals from the seed (the same for every policy), the policy order rotated
from one seed to the next. Every request must come back with exactly its output_tokens, or the tool stops.

Pooled: per seed, each policy's mean/p50/p90/p99 end-to-end latency and TPOT (the client's own figures),
pars/fcfs and oracle/fcfs of mean latency and recovery = (fcfs - pars) / (fcfs - oracle); over seeds their
mean with a t 95 % interval. Written: --out (JSON), the .md table and the .png beside it; the client's result
files and the datasets under --client-dir.

    .venv/bin/python -m experiments.vllm_bench --start --data /tmp/sg/val_data.json --model-dir /tmp/pars-llama22m \\
        --ranker-path outputs/quickstart/model/best_model.pt --num-prompts 100 --load-factor 1.5 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from experiments.lib.args import OneLineParser, ints
from experiments.lib.bench_client import check_lengths, client_argv, summarize, write_dataset
from experiments.lib.harness import Servers, log_dir_for
from experiments.lib.paths import ROOT, RUNS
from experiments.lib.reports import fmt, fmt_ci, md_head, tight_figure
from experiments.lib.stats import over_traces
from experiments.lib.traces import Request, build_trace, digest, prompt_rows
from pars.common.processes import load_average

DEFAULT_OUT = RUNS / "vllm_bench.json"
POLICIES = ("fcfs", "pars", "oracle")
SCORERS = {"fcfs": ("none",), "pars": ("remote", "local"), "oracle": ("max_tokens",)}
METRICS = ("e2el_mean_s", "e2el_p50_s", "e2el_p90_s", "e2el_p99_s", "tpot_mean_ms", "tpot_p50_ms", "tpot_p90_ms",
           "tpot_p99_ms")


def parser() -> OneLineParser:
    p = OneLineParser(prog="python -m experiments.vllm_bench", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("trace")
    g.add_argument("--data", type=Path, required=True, help="val_data.json from data_preprocess (prompt, "
                   "answer_content rows)")
    g.add_argument("--model-dir", type=Path, required=True, help="the served model's directory: its tokenizer "
                   "counts the answers' tokens, the client loads it, and --start serves it")
    g.add_argument("--num-prompts", type=int, default=100, help="requests per run (rows of --data drawn per seed)")
    g.add_argument("--seeds", "--seed", dest="seeds", type=ints, default=[0], help="comma list; each seed "
                   "draws its own rows and Poisson arrivals (the same for every policy) and is one trace to pool")
    g.add_argument("--max-tokens-cap", type=int, default=1024, help="output_tokens = min(true length, this)")
    g.add_argument("--max-model-len", type=int, default=2048, help="vLLM's context; rows whose prompt + "
                   "output_tokens exceed it are left out (and counted)")

    g = p.add_argument_group("load")
    g.add_argument("--load-factor", type=float, default=1.5, help="rate = this x the capacity measured per seed")
    g.add_argument("--request-rate", type=float, default=None, help="a fixed arrival rate, requests/s, instead "
                   "of measuring the capacity (--load-factor is then not used)")
    g.add_argument("--capacity-prompts", type=int, default=None, help="the capacity burst's size: this prefix "
                   "of the trace sent at once (default: 2 x --max-num-seqs, every slot busy twice over)")
    g.add_argument("--capacity-tokens", type=int, default=128, help="output tokens of each capacity request; "
                   "capacity = output tokens/s / the trace's mean output_tokens, in requests/s")

    g = p.add_argument_group("servers: --start, or already running")
    g.add_argument("--start", action="store_true", help="start vLLM, the predictor service and the three "
                   "gateways here, as child processes stopped at exit; logs in --log-dir")
    g.add_argument("--vllm-url", help="without --start: vLLM (--scheduling-policy priority)")
    for name in POLICIES:
        g.add_argument(f"--{name}-url", help=f"without --start: the {name} gateway (GATEWAY_SCORER="
                       f"{SCORERS[name][0]}); its scorer is checked at /gateway/health")
    g.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"), help="python of the "
                   "vLLM venv (experiments/vllm_setup.sh): runs vLLM and the benchmark client")
    g.add_argument("--max-num-seqs", type=int, default=8, help="vLLM's running slots: few, so requests queue")
    g.add_argument("--kvcache-gib", type=float, default=2, help="VLLM_CPU_KVCACHE_SPACE")
    g.add_argument("--ranker-path", type=Path, help="--start: the ranker checkpoint (PREDICTOR_MODEL_PATH); "
                   "the metrics.json beside it gives PREDICTOR_POOLING/TRUNCATION/MAX_LENGTH")
    g.add_argument("--ranker-name", default=None, help="PREDICTOR_MODEL_NAME: its encoder, for a checkpoint whose "
                   "ranker_config.json does not name it (default: as that file says)")
    g.add_argument("--fairness-window-s", type=float, default=10.0, help="GATEWAY_FAIRNESS_WINDOW_S of the pars "
                   "and oracle gateways (W: only requests arriving within W after one can overtake it)")
    g.add_argument("--predictor-timeout-ms", type=float, default=200.0, help="GATEWAY_PREDICTOR_TIMEOUT_MS (the "
                   "ranker shares the CPU with vLLM, so more than the gateway's default 50)")
    g.add_argument("--startup-timeout-s", type=float, default=900.0, help="wait this long for each server")
    g.add_argument("--log-dir", type=Path, help="servers' and clients' logs (default /tmp/<stem of --out>_logs)")

    g = p.add_argument_group("outputs")
    g.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON; the .md table and .png beside it")
    g.add_argument("--client-dir", type=Path, help="the datasets and the client's result files (default: "
                   "<stem of --out>_client/ beside --out)")
    g.add_argument("--cooldown-s", type=float, default=2.0, help="pause between client runs")
    g.add_argument("--client-timeout-s", type=float, default=3600.0, help="a client run that takes longer fails")
    g.add_argument("--note", default="", help="recorded in the JSON")
    return p


def check(args: argparse.Namespace) -> None:
    """What argparse cannot check; ValueError in one line naming the flag."""
    if not args.data.is_file():
        raise ValueError(f"--data {args.data}: no such file")
    if not (args.model_dir / "config.json").is_file():
        raise ValueError(f"--model-dir {args.model_dir}: no config.json there (build it: experiments/vllm_setup.sh)")
    if not Path(args.vllm_python).is_file():
        raise ValueError(f"--vllm-python {args.vllm_python}: no such file (experiments/vllm_setup.sh makes it)")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        raise ValueError("--seeds must be a comma list of distinct integers")
    if args.num_prompts < 1 or args.capacity_tokens < 1 or args.max_num_seqs < 1:
        raise ValueError("--num-prompts, --capacity-tokens and --max-num-seqs must be at least 1")
    args.capacity_prompts = args.capacity_prompts or 2 * args.max_num_seqs
    if not 1 <= args.capacity_prompts <= args.num_prompts:
        raise ValueError(f"--capacity-prompts must be 1 to --num-prompts ({args.num_prompts})")
    if args.load_factor <= 0 or (args.request_rate is not None and args.request_rate <= 0):
        raise ValueError("--load-factor and --request-rate must be positive")
    if args.fairness_window_s < 0:
        raise ValueError("--fairness-window-s must be 0 or more")
    if args.start:
        if args.ranker_path is None or not args.ranker_path.is_file():
            raise ValueError(f"--start needs --ranker-path, an existing checkpoint (got {args.ranker_path})")
    else:
        missing = [f"--{n}-url" for n in ("vllm", *POLICIES) if not getattr(args, f"{n}_url")]
        if missing:
            raise ValueError(f"without --start, give {', '.join(missing)}")


def policy_order(seed_index: int, policies: Sequence[str] = POLICIES) -> list[str]:
    """The runs' order for the seed_index-th seed: rotated by one per seed, so no policy always runs first
    (after the warm-up and the capacity burst) or always follows the same one."""
    k = seed_index % len(policies)
    return list(policies[k:]) + list(policies[:k])


# ---- servers -----------------------------------------------------------------------------------------------


def start_servers(args: argparse.Namespace, servers: Servers) -> dict[str, str]:
    """vLLM, the predictor service and the fcfs, pars and oracle gateways, started as experiments.vllm_e2e
    starts its servers; returns {"vllm": url, policy: gateway url}."""
    from experiments.vllm_e2e.servers import start_all
    from pars.model.ranker_config import resolve

    # The service reads the ranker's settings from its ranker_config.json; recorded here for the report.
    config = resolve(args.ranker_path, {"model_name": args.ranker_name})
    ns = argparse.Namespace(
        model_dir=args.model_dir, kvcache_gib=args.kvcache_gib, engine_cpus=None, vllm_cpus=None, side_cpus=None,
        vllm_python=args.vllm_python, max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
        predictor_timeout_ms=args.predictor_timeout_ms, fcfs_gateway=True, ranker_path=[str(args.ranker_path)],
        ranker_nice=None, ranker_name=[args.ranker_name], predictor_backend="torch", predictor_threads=None,
        onnx_cache_dir=None, scorer="remote", fairness_windows=[args.fairness_window_s], prompt_length_weights=[0.0],
        startup_timeout_s=args.startup_timeout_s, predictor_url=None,
        ranker_max_length=None, ranker_truncation=None, ranker_pooling=None)
    args.ranker_settings = {**config.to_dict(), "config_source": config.source}
    oracle = ("oracle-gw", {"GATEWAY_SCORER": "max_tokens", "GATEWAY_FAIRNESS_WINDOW_S": str(args.fairness_window_s)})
    vllm_url, (fcfs_url, pars_url, oracle_url) = start_all(ns, servers, extra_gateways=[oracle])
    return {"vllm": vllm_url, "fcfs": fcfs_url, "pars": pars_url, "oracle": oracle_url}


def check_gateways(urls: dict[str, str]) -> dict[str, dict]:
    """Each policy's gateway's /gateway/health, its scorer checked; SystemExit in one line otherwise."""
    from experiments.vllm_e2e.client import gateway_health

    health = {}
    for name in POLICIES:
        health[name] = gateway_health(urls[name])
        if health[name].get("scorer") not in SCORERS[name]:
            raise SystemExit(f"the {name} gateway at {urls[name]} has GATEWAY_SCORER={health[name].get('scorer')}, "
                             f"not {SCORERS[name][0]}")
    return health


# ---- one seed ----------------------------------------------------------------------------------------------


def fill_oracle_window(url: str, trace: Sequence[Request], model: str) -> None:
    """Each request's max_tokens once through the oracle gateway, which takes it into its quantile window
    before forwarding; vLLM then rejects the request (temperature -1), so nothing is generated. The same
    warm window the pars gateway gets from the warm-up, without a second full run."""
    import httpx

    with httpx.Client(timeout=60) as client:
        for r in trace:
            body = {"model": model, "prompt": r.prompt, "max_tokens": r.max_tokens, "temperature": -1.0}
            if client.post(url + "/v1/completions", json=body).status_code != 400:
                raise SystemExit("filling the oracle's window: vLLM did not reject temperature -1 as expected")


def run_client(args: argparse.Namespace, argv: list[str], result: Path, log: Path) -> dict:
    """One client run; its result JSON. SystemExit with the log's tail when it fails."""
    result.unlink(missing_ok=True)
    with log.open("w", encoding="utf-8") as f:
        try:
            rc = subprocess.run(argv, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=f,
                                stderr=subprocess.STDOUT, timeout=args.client_timeout_s).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc != 0 or not result.is_file():
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise SystemExit(f"the benchmark client failed ({rc}); {log}: {' | '.join(tail)}")
    return json.loads(result.read_text(encoding="utf-8"))


def measure_rate(args: argparse.Namespace, vllm_url: str, model: str, dataset: Path, seed: int, mean_tokens: float,
                 client_dir: Path, log_dir: Path) -> tuple[dict | None, float]:
    """The capacity burst straight to vLLM and the request rate it sets (--load-factor x capacity), unless
    --request-rate fixes the rate: (capacity record or None, rate)."""
    capacity = None
    rate = args.request_rate
    if rate is None:
        name = f"seed{seed}_capacity.json"
        argv = client_argv(args.vllm_python, vllm_url, model, dataset, args.capacity_prompts, float("inf"), seed,
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
    return capacity, rate


def replay(args: argparse.Namespace, order: Sequence[str], urls: dict[str, str], model: str, dataset: Path,
           n_prompts: int, expected: list[int], rate: float, seed: int, client_dir: Path, log_dir: Path,
           cooldown_first: bool) -> dict[str, dict]:
    """The trace replayed once per policy in `order` at `rate` by vLLM's client, each answer's length checked;
    the record of each run."""
    from experiments.vllm_e2e.client import gateway_health, new_fallbacks

    runs = {}
    for i, pol in enumerate(order):
        if i or cooldown_first:
            time.sleep(args.cooldown_s)
        name = f"seed{seed}_{pol}.json"
        argv = client_argv(args.vllm_python, urls[pol], model, dataset, n_prompts, rate, seed, client_dir, name)
        h0 = gateway_health(urls[pol])
        started = time.monotonic()
        res = run_client(args, argv, client_dir / name, log_dir / f"client_seed{seed}_{pol}.log")
        wall = time.monotonic() - started
        h1 = gateway_health(urls[pol])
        check_lengths(res, expected, f"seed {seed} {pol}")
        runs[pol] = {"result_file": str(client_dir / name), "wall_s": round(wall, 1), "summary": summarize(res),
                     "fallbacks": new_fallbacks(h0, h1), "argv": argv[3:]}
        s = runs[pol]["summary"]
        print(f"seed {seed} {pol}: e2el mean {s['e2el_mean_s']:.2f} s, p99 {s['e2el_p99_s']:.2f} s, TPOT mean "
              f"{s['tpot_mean_ms']:.1f} ms ({res['duration']:.0f} s)", flush=True)
    return runs


def run_seed(args: argparse.Namespace, k: int, seed: int, urls: dict[str, str], model: str, rows: list[dict],
             tokenizer, client_dir: Path, log_dir: Path) -> dict:
    """Trace, warm-up, capacity and one run per policy for one seed; its record."""
    from experiments.vllm_e2e.client import gateway_health, prime
    from experiments.vllm_e2e.policies import Policy

    trace, skipped = build_trace(rows, tokenizer, args.num_prompts, seed, args.max_tokens_cap, args.max_model_len)
    dataset = write_dataset(trace, client_dir / f"seed{seed}.jsonl")
    expected = [r.max_tokens for r in trace]
    mean_tokens = float(np.mean(expected))
    print(f"seed {seed}: {len(trace)} prompts, output_tokens mean {mean_tokens:.1f}, "
          f"{sum(r.answer_tokens > r.max_tokens for r in trace)} capped; warming up", flush=True)
    before = {n: gateway_health(urls[n])["scores_in_window"] for n in ("pars", "oracle")}
    asyncio.run(prime([Policy("pars", urls["pars"], "gateway")], trace, model))
    fill_oracle_window(urls["oracle"], trace, model)
    filled = {n: gateway_health(urls[n])["scores_in_window"] - before[n] for n in before}
    capacity, rate = measure_rate(args, urls["vllm"], model, dataset, seed, mean_tokens, client_dir, log_dir)
    order = policy_order(k)
    runs = replay(args, order, urls, model, dataset, len(trace), expected, rate, seed, client_dir, log_dir,
                  cooldown_first=capacity is not None)
    return {"seed": seed, "order": order, "rate": rate, "capacity": capacity, "dataset": str(dataset),
            "trace": {"n": len(trace), "skipped": skipped, "ids_sha": digest([r.id for r in trace]),
                      "output_tokens_mean": mean_tokens, "output_tokens_sum": int(sum(expected)),
                      "capped": sum(r.answer_tokens > r.max_tokens for r in trace)},
            "warm_windows": filled, "runs": runs, **seed_ratios(runs)}


# ---- pooling and outputs -----------------------------------------------------------------------------------


def seed_ratios(runs: dict[str, dict]) -> dict[str, float]:
    """pars/fcfs and oracle/fcfs of mean end-to-end latency, and the share of the oracle's gain PARS recovers
    (nan when the oracle gained nothing)."""
    f, p, o = (runs[n]["summary"]["e2el_mean_s"] for n in POLICIES)
    return {"ratio_pars_fcfs": p / f, "ratio_oracle_fcfs": o / f,
            "recovery": (f - p) / (f - o) if f != o else float("nan")}


def pool(per_seed: Sequence[dict]) -> dict:
    """Over seeds (one trace each): every policy's figures and the ratios, each as count, mean and t 95 %."""
    out: dict = {n: {m: over_traces([s["runs"][n]["summary"][m] for s in per_seed]) for m in METRICS}
                 for n in POLICIES}
    for key in ("ratio_pars_fcfs", "ratio_oracle_fcfs", "recovery"):
        out[key] = over_traces([s[key] for s in per_seed])
    return out


def table(per_seed: Sequence[dict], pooled: dict) -> str:
    """Two markdown tables: each policy's latencies per seed and pooled; the ratios and recovery."""
    cols = ["seed", "rate/s", "policy", "e2el mean s", "p50 s", "p90 s", "p99 s", "TPOT mean ms", "p50 ms", "p90 ms",
            "p99 ms"]
    lines = [md_head(cols)]
    for s in per_seed:
        for n in POLICIES:
            r = s["runs"][n]["summary"]
            lines.append(f"| {s['seed']} | {s['rate']:g} | {n} | " + " | ".join(
                fmt(r[m], 1 if m.endswith("ms") else 2) for m in METRICS) + " |")
    for n in POLICIES:
        q = pooled[n]
        lines.append(f"| mean (t 95%) | | {n} | " + " | ".join(
            fmt(q[m]["mean"], 1 if m.endswith("ms") else 2) + (f" {fmt_ci(q[m]['t_ci'])}" if m == "e2el_mean_s" else "")
            for m in METRICS) + " |")
    lines += ["", md_head(["seed", "order", "pars / fcfs", "oracle / fcfs", "recovery (fcfs-pars)/(fcfs-oracle)"])]
    for s in per_seed:
        lines.append(f"| {s['seed']} | {' '.join(s['order'])} | {fmt(s['ratio_pars_fcfs'], 3)} | "
                     f"{fmt(s['ratio_oracle_fcfs'], 3)} | {fmt(s['recovery'], 2)} |")
    cell = {k: f"{fmt(pooled[k]['mean'], 3)} {fmt_ci(pooled[k]['t_ci'], 3)}".strip()
            for k in ("ratio_pars_fcfs", "ratio_oracle_fcfs", "recovery")}
    lines.append(f"| mean (t 95%) over {len(per_seed)} | | {cell['ratio_pars_fcfs']} | {cell['ratio_oracle_fcfs']} | "
                 f"{cell['recovery']} |")
    return "\n".join(lines)


def plot(per_seed: Sequence[dict], pooled: dict, path: Path, title: str) -> None:
    """Mean end-to-end latency per policy, a group of bars per seed and one pooled (its t 95 % interval over
    seeds drawn on it)."""
    fig = tight_figure(2.2 + 1.6 * (len(per_seed) + 1), 4.0)
    ax = fig.subplots()
    groups = [f"seed {s['seed']}" for s in per_seed] + ["mean"]
    x = np.arange(len(groups))
    width = 0.8 / len(POLICIES)
    for j, n in enumerate(POLICIES):
        q = pooled[n]["e2el_mean_s"]
        values = [s["runs"][n]["summary"]["e2el_mean_s"] for s in per_seed] + [q["mean"]]
        xs = x + (j - (len(POLICIES) - 1) / 2) * width
        ax.bar(xs, values, width, label=n)
        if q["t_ci"]:
            ax.errorbar(xs[-1], q["mean"], yerr=[[q["mean"] - q["t_ci"][0]], [q["t_ci"][1] - q["mean"]]], color="k",
                        capsize=3)
    ax.set_xticks(x, groups)
    ax.set_ylabel("mean end-to-end latency s")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_outputs(report: dict, out: Path) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    text = table(report["per_seed"], report["pooled"])
    out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    plot(report["per_seed"], report["pooled"], out.with_suffix(".png"),
         f"vllm bench serve via gateways: {report['per_seed'][0]['trace']['n']} prompts x "
         f"{len(report['per_seed'])} seeds, load factor {report['config']['load_factor']:g}, W "
         f"{report['config']['fairness_window_s']:g} s, {report['started_at']}")
    return text


# ---- main --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        check(args)
    except ValueError as exc:
        p.error(str(exc))
    from transformers import AutoTokenizer

    from experiments.vllm_e2e.client import model_name

    out = Path(args.out)
    client_dir = (args.client_dir or out.with_name(out.stem + "_client")).resolve()
    log_dir = log_dir_for(args.log_dir, out)
    log_dir.mkdir(parents=True, exist_ok=True)
    client_dir.mkdir(parents=True, exist_ok=True)
    rows = prompt_rows(args.data)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    started = time.monotonic()
    report = {"what": "issue 29: FCFS, PARS and oracle gateways driven by vLLM's own benchmark client",
              "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "note": args.note,
              "machine": {"cpus": os.cpu_count(), "load_avg_before": load_average()},
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "client_dir": str(client_dir), "log_dir": str(log_dir)}
    servers = Servers(log_dir, prefix="vllm_bench_")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through the finally: servers stopped
    per_seed: list[dict] = []
    try:
        if args.start:
            urls = start_servers(args, servers)
            report["ranker_settings"] = args.ranker_settings
        else:
            urls = {"vllm": args.vllm_url, **{n: getattr(args, f"{n}_url") for n in POLICIES}}
        model = model_name(urls["vllm"])  # the name vLLM serves it under (--start: the resolved --model-dir)
        report["servers"] = {"urls": urls, "gateways": check_gateways(urls)}
        for k, seed in enumerate(args.seeds):
            per_seed.append(run_seed(args, k, seed, urls, model, rows, tokenizer, client_dir, log_dir))
            out.with_suffix(".partial.json").write_text(json.dumps({**report, "per_seed": per_seed}, indent=1),
                                                        encoding="utf-8")
        report["machine"]["load_avg_after"] = load_average()
    finally:
        servers.stop()
    report["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report["wall_s"] = round(time.monotonic() - started, 1)
    report["per_seed"] = per_seed
    report["pooled"] = pool(per_seed)
    print(write_outputs(report, out))
    print(f"\nwrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}; client results in {client_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
