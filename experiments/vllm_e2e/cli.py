"""The experiment's command line: the flags, and the two jobs (--build-model; the experiment, or --report-from
on its JSON). The tool itself is described in experiments/vllm_e2e/__init__.py, which --help prints."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from experiments import vllm_e2e
from experiments.lib.args import floats, parse_checked, per_ranker
from experiments.lib.harness import Servers, cpu_list, log_dir_for
from experiments.lib.paths import ROOT, RUNS
from experiments.lib.traces import prompt_rows
from experiments.vllm_e2e.analysis import analyse
from experiments.vllm_e2e.experiment import experiment
from experiments.vllm_e2e.model import build_model, time_decode_step
from experiments.vllm_e2e.report import probe_table, write_outputs
from experiments.vllm_e2e.servers import ranker_settings, start_all

DEFAULT_OUT = RUNS / "vllm_e2e.json"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.vllm_e2e", description=vllm_e2e.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("building the model (--build-model)")
    g.add_argument("--build-model", type=Path, metavar="DIR", help="build the random-weight Llama and tokenizer "
                   "into DIR (from --data's rows) and exit")
    g.add_argument("--hidden-size", type=int, default=512)
    g.add_argument("--layers", type=int, default=4)
    g.add_argument("--heads", type=int, default=8)
    g.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    g.add_argument("--intermediate-size", type=int, default=1536)
    g.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary to train (at most)")
    g.add_argument("--tokenizer-rows", type=int, default=0, help="rows of --data to train the tokenizer on "
                   "(0: all)")
    g.add_argument("--time-step", action="store_true", help="after building, time one decode step of "
                   "--max-num-seqs sequences with transformers (a rough guide; vLLM's own step time differs)")

    g = p.add_argument_group("trace")
    g.add_argument("--data", type=Path, help="val_data.json from data_preprocess (prompt, answer_content)")
    g.add_argument("--model-dir", type=Path, help="the served model's directory: its tokenizer counts tokens "
                   "(and --start serves it)")
    g.add_argument("--num-requests", type=int, default=100, help="requests per run")
    g.add_argument("--rates", type=floats, default=[0.8, 1.2, 1.6], help="arrival rates, requests/s, comma list")
    g.add_argument("--load-factors", type=floats, default=None, help="instead of --rates: offered load as a "
                   "multiple of the capacity measured before the runs (see --capacity-tokens), comma list; "
                   "rates = factor x capacity, the same for every repeat")
    g.add_argument("--capacity-tokens", type=int, default=128, help="the capacity burst: 2 x --max-num-seqs "
                   "requests of this many tokens each, sent at once, before the runs and again before each "
                   "repeat (recorded, to show drift)")
    g.add_argument("--max-tokens-cap", type=int, default=1024, help="max_tokens = min(true length, this)")
    g.add_argument("--max-model-len", type=int, default=2048, help="rows whose prompt + max_tokens exceed this "
                   "are left out")
    g.add_argument("--seed", type=int, default=0, help="rows drawn and arrivals: the same for every policy")

    g = p.add_argument_group("servers already running")
    g.add_argument("--vllm-url", default="http://127.0.0.1:8000", help="vLLM started with --scheduling-policy "
                   "priority (fcfs, oracle, prompt-length go here)")
    g.add_argument("--gateway", action="append", default=[], metavar="[RANKER=]URL", help="a PARS gateway in "
                   "front of that vLLM (repeatable): GATEWAY_SCORER=none gives policy fcfs-gw, a scoring one pars@W "
                   "with W its GATEWAY_FAIRNESS_WINDOW_S (read from /gateway/health); RANKER= names the ranker "
                   "behind it, giving pars[RANKER]@W (to compare rankers in one experiment)")
    g.add_argument("--model", help="model name sent in requests (default: vLLM's /v1/models)")
    g.add_argument("--predictor-url", help="the predictor service the gateways call (set by --start): polled "
                   "(GET /ready) twice a second during every run, so a stall of the predictor itself is dated and "
                   "told apart from the gateway's own failures")

    g = p.add_argument_group("--start: launch vLLM, predictor and gateways here")
    g.add_argument("--start", action="store_true", help="start the servers as child processes (stopped at exit)")
    g.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"),
                   help="python of the vLLM venv (experiments/vllm_setup.sh)")
    g.add_argument("--max-num-seqs", type=int, default=8, help="vLLM's running slots: small so requests queue")
    g.add_argument("--kvcache-gib", type=float, default=2, help="VLLM_CPU_KVCACHE_SPACE")
    g.add_argument("--ranker-path", nargs="+", help="the trained ranker checkpoint (PREDICTOR_MODEL_PATH); "
                   "several: one predictor service and set of gateways each, policies pars[<its directory>]@W")
    # Unset, as the service does: each ranker's ranker_config.json, else the original release's settings.
    g.add_argument("--ranker-name", nargs="+", default=None,
                   help="PREDICTOR_MODEL_NAME: the encoder each ranker was trained from, one for all or one per "
                        "--ranker-path (default, as for the next three: each ranker's ranker_config.json)")
    g.add_argument("--ranker-max-length", type=int, nargs="+", metavar="TOKENS", help="PREDICTOR_MAX_LENGTH: one "
                   "for every ranker or one per --ranker-path, in order")
    g.add_argument("--ranker-truncation", nargs="+", choices=["head", "middle"], help="PREDICTOR_TRUNCATION: one "
                   "for every ranker or one per --ranker-path")
    g.add_argument("--ranker-pooling", nargs="+", choices=["pooler", "mean"], help="PREDICTOR_POOLING: one for "
                   "every ranker or one per --ranker-path")
    g.add_argument("--predictor-backend", choices=["torch", "onnx", "onnx-int8"], default="torch",
                   help="PREDICTOR_BACKEND of the ranker: onnx-int8 takes ~1/2 the CPU of torch, left to vLLM")
    g.add_argument("--predictor-threads", type=int, default=None,
                   help="PREDICTOR_NUM_THREADS of the ranker (default: the service's own, physical cores)")
    g.add_argument("--onnx-cache-dir", default=None, help="PREDICTOR_ONNX_CACHE_DIR (the exported ONNX models)")
    g.add_argument("--ranker-nice", type=int, nargs="+", metavar="N", help="run each ranker's scoring process "
                   "(its predictor service; under --scorer local, its gateways) at this nice increment: one for all "
                   "or one per ranker; a checkpoint given twice with two values runs as two policies, "
                   "pars[<name>+nice<N>]@W")
    g.add_argument("--scorer", choices=["remote", "local"], default="remote",
                   help="remote: one predictor service for all gateways; local: the ranker in each gateway")
    g.add_argument("--prompt-length-weights", type=floats, default=[0.0],
                   help="one pars gateway per W and weight: GATEWAY_PROMPT_LENGTH_WEIGHT (policy pars+len<weight>@W "
                        "when > 0)")
    g.add_argument("--fairness-windows", type=floats, default=[10.0], help="one pars gateway per W (seconds), "
                   "comma list: the starvation guard's trade-off curve")
    g.add_argument("--no-fcfs-gateway", dest="fcfs_gateway", action="store_false",
                   help="do not start the GATEWAY_SCORER=none gateway (policy fcfs-gw)")
    g.add_argument("--predictor-timeout-ms", type=float, default=200.0, help="GATEWAY_PREDICTOR_TIMEOUT_MS: the "
                   "ranker shares the CPU with vLLM here, so more than the default 50")
    g.add_argument("--engine-cpus", default=None, metavar="CPUS", help="VLLM_CPU_OMP_THREADS_BIND, the cores of "
                   "vLLM's engine, e.g. 0 (default: vLLM's own choice; on 2 cores it takes core 0 and leaves 1)")
    g.add_argument("--vllm-cpus", default=None, metavar="CPUS", help="run all of vLLM (its API server, "
                   "EngineCore and Worker processes) on these cores only (taskset list, e.g. 0). Without it only the "
                   "Worker is bound (--engine-cpus) and the others float onto the side cores, where the scoring "
                   "then slows them; with it and --side-cpus, PARS takes no CPU from vLLM, as on a GPU box")
    g.add_argument("--side-cpus", default=None, metavar="CPUS", help="run the predictor services, the gateways "
                   "and this client on these cores only (taskset list, e.g. 1), off the engine's: on a small CPU "
                   "their work otherwise stalls decode steps, in the scored runs only")
    g.add_argument("--startup-timeout-s", type=float, default=900.0)
    g.add_argument("--log-dir", type=Path, default=None, help="servers' logs (default: /tmp/<stem of --out>_logs/, "
                   "one folder per experiment, so a later experiment does not overwrite them)")

    g = p.add_argument_group("experiment")
    g.add_argument("--policies", help="only these policies, comma list (default: fcfs, oracle, prompt-length and "
                   "one per gateway)")
    g.add_argument("--repeats", type=int, default=3, help="exact repeats of each (rate, policy) cell")
    g.add_argument("--stream", action="store_true", help="streaming requests: TTFT measured, more client work")
    g.add_argument("--client-nice", type=int, default=0, help="os.nice() increment for this client once the "
                   "servers are up, so that on a small CPU the servers get it first")
    g.add_argument("--cooldown-s", type=float, default=2.0, help="pause between runs")
    g.add_argument("--no-prime", dest="prime", action="store_false", help="skip priming (see prime())")
    g.add_argument("--probe", type=int, default=40, help="idle probe rounds for the gateway's own latency (0: none)")
    g.add_argument("--probe-only", action="store_true", help="only the probe (no priming, no runs): prints the "
                   "gateways' own latency and writes it to --out (JSON)")
    g.add_argument("--bootstrap", type=int, default=2000, help="bootstrap draws for the intervals")
    g.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON; the .md table and .png beside it")
    g.add_argument("--report-from", type=Path, metavar="JSON", help="redo the summary, targets, table and PNG "
                   "of a finished run's JSON (its runs are kept) and write them beside it (or to --out); also "
                   "takes the *.partial.json a stopped experiment leaves (its finished runs, written to *.json)")
    g.add_argument("--note", default="", help="recorded in the JSON (what else ran on the machine, ...)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = parse_checked(p, argv, check)
    if args.build_model:
        return build(args)
    if args.report_from:
        return report_from(args)
    return run(args)


def check(args: argparse.Namespace) -> None:
    """The flags' values that argparse cannot check itself; ValueError naming the flag."""
    ranker_settings(args)
    if any(not 0 <= k <= 19 for k in per_ranker(args.ranker_nice, len(args.ranker_path or []),
                                                  "--ranker-nice") if k is not None):
        raise ValueError("--ranker-nice takes 0 to 19 (a lower priority than the engine's, never a higher)")
    for flag, spec in (("--engine-cpus", args.engine_cpus), ("--side-cpus", args.side_cpus),
                       ("--vllm-cpus", args.vllm_cpus)):
        if spec is not None:
            try:
                cpu_list(spec)
            except ValueError as exc:
                raise ValueError(f"{flag}: {exc}") from None
    if args.load_factors is not None and min(args.load_factors, default=0.0) <= 0:
        raise ValueError("--load-factors must be positive numbers")
    if args.capacity_tokens < 1:
        raise ValueError("--capacity-tokens must be at least 1")


def build(args: argparse.Namespace) -> int:
    """--build-model: the model and its tokenizer, trained on --data's rows."""
    if args.data is None:
        raise SystemExit("--build-model needs --data (the tokenizer is trained on its rows)")
    rows = prompt_rows(args.data)
    if args.tokenizer_rows:
        rows = rows[: args.tokenizer_rows]
    info = build_model(args.build_model, rows, args.hidden_size, args.layers, args.heads, args.kv_heads,
                       args.intermediate_size, args.vocab_size, args.max_model_len, args.seed)
    if args.time_step:
        info["decode_step_ms_transformers"] = time_decode_step(args.build_model, args.max_num_seqs)
    print(json.dumps(info, indent=2))
    return 0


def report_from(args: argparse.Namespace) -> int:
    """--report-from: the summary, targets, table and PNG redone from a report's runs."""
    source = Path(args.report_from)
    report = json.loads(source.read_text(encoding="utf-8"))
    cfg = report["config"]
    if "plan_size" in report:  # a stopped experiment's *.partial.json: analyse the runs it finished
        report["partial"] = f"{len(report['runs'])} of {report.pop('plan_size')} planned runs"
        print(f"partial experiment: {report['partial']}")
    report["summary"], report["targets"] = analyse(
        report["runs"], report["policies"], [float(r) for r in cfg["rates"]], report["trace"]["n"],
        int(cfg["bootstrap"]), int(cfg["seed"]), report.get("probe"))
    if args.out != DEFAULT_OUT:
        out = Path(args.out)
    else:  # beside the source: x.partial.json -> x.json
        out = source.with_name(source.name.removesuffix(".partial.json") + ".json")
    print(write_outputs(report, out))
    return 0


def run(args: argparse.Namespace) -> int:
    """The experiment, against the servers given or started here (--start), then its outputs."""
    servers = Servers(log_dir_for(args.log_dir, Path(args.out)), prefix="vllm_e2e_")
    # kill/SIGTERM unwinds like Ctrl-C, through the finally below: the servers started here stop with us
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if args.start:
            vllm_url, gateways = start_all(args, servers)
        else:
            vllm_url, gateways = args.vllm_url, args.gateway
        report = experiment(args, vllm_url, gateways)
    finally:
        servers.stop()

    out = Path(args.out)
    if args.probe_only:
        out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(probe_table(report["probe"]))
        print(f"\nwrote {out}")
        return 0
    print(write_outputs(report, out))
    print(f"\nwrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')}")
    return 0
