"""--start: vLLM, two predictor services with the deployed ranker (A, reloadable: the one the loop reloads; B,
never reloaded: the before arm) and four gateways in front of the one vLLM, started as experiments.vllm_bench
starts its own (experiments.vllm_e2e.servers.start_all). Also what the tool checks of servers it did not start."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.lib.harness import Servers, wait_up
from experiments.lib.paths import ROOT
from pars.common.processes import free_port

# The four policies of the latency phase, and the gateway each goes through:
#   fcfs      GATEWAY_SCORER=none
#   pars-old  GATEWAY_SCORER=remote on predictor B: the deployed ranker, never reloaded
#   pars-new  GATEWAY_SCORER=remote on predictor A: the ranker the loop put there (records the traffic)
#   oracle    GATEWAY_SCORER=max_tokens (the request's own max_tokens = its exact answer length here)
POLICIES = ("fcfs", "pars-old", "pars-new", "oracle")
SCORERS = {"fcfs": ("none",), "pars-old": ("remote",), "pars-new": ("remote",), "oracle": ("max_tokens",)}
URL_FLAGS = {"fcfs": "fcfs_url", "pars-old": "pars_old_url", "pars-new": "pars_url", "oracle": "oracle_url"}


def predictor_env(args: argparse.Namespace, reloadable: bool) -> dict[str, str]:
    """A predictor service with the deployed ranker (its settings read from beside the checkpoint by the
    service); POST /admin/reload on only where `reloadable`."""
    env = {"PREDICTOR_MODEL_PATH": str(Path(args.ranker_path).resolve()), "PREDICTOR_DEVICE": "cpu",
           "PREDICTOR_BACKEND": "torch", "PREDICTOR_ADMIN_RELOAD": "true" if reloadable else "false"}
    if args.ranker_name:
        env["PREDICTOR_MODEL_NAME"] = args.ranker_name
    return env


def start_servers(args: argparse.Namespace, servers: Servers, records_dir: Path, records_old_dir: Path
                  ) -> dict[str, str]:
    """Everything, started; returns {"vllm", "predictor" (A), "predictor-old" (B), policy: gateway URL}.
    Both pars gateways record (A's into `records_dir`, the loop's input; B's into `records_old_dir`), so
    that the two arms do the same work per request (GATEWAY_RECORD_DIR also asks streamed answers for their
    usage, which the gateway then reads and strips)."""
    from experiments.vllm_e2e.servers import start_all
    from pars.model.ranker_config import resolve

    config = resolve(args.ranker_path, {"model_name": args.ranker_name})
    args.ranker_settings = {**config.to_dict(), "config_source": config.source}
    uv = [sys.executable, "-m", "uvicorn", "scripts.serve_predictor_score:app", "--host", "127.0.0.1",
          "--no-access-log"]
    predictors = {}
    for name, reloadable in (("predictor", True), ("predictor-old", False)):
        port = free_port()
        proc = servers.start(name, uv + ["--port", str(port)], predictor_env(args, reloadable),
                             ROOT / "predictor_serving")
        predictors[name] = (proc, f"http://127.0.0.1:{port}")
    w = str(args.fairness_window_s)
    # The quantile window holds one latency trace: the phase primes each trace's prompts once through both pars
    # gateways (and the oracle's), so each arm places its scores among exactly that trace's (the first run had
    # pars-new's window full of 1,000 recorded requests and pars-old's of its warm-up only: arms unlike).
    q = str(args.num_prompts)
    pars_env = {"GATEWAY_SCORER": "remote", "GATEWAY_FAIRNESS_WINDOW_S": w, "GATEWAY_QUANTILE_WINDOW": q}
    extra = [("pars-new-gw", {**pars_env, "GATEWAY_PREDICTOR_URL": predictors["predictor"][1],
                              "GATEWAY_RECORD_DIR": str(records_dir)}),
             ("pars-old-gw", {**pars_env, "GATEWAY_PREDICTOR_URL": predictors["predictor-old"][1],
                              "GATEWAY_RECORD_DIR": str(records_old_dir)}),
             ("oracle-gw", {"GATEWAY_SCORER": "max_tokens", "GATEWAY_FAIRNESS_WINDOW_S": w,
                            "GATEWAY_QUANTILE_WINDOW": q})]
    # No ranker through start_all: it starts vLLM, the fcfs gateway and the three above, with its shared
    # gateway settings (the upstream, the predictor timeout); the predictors are this tool's own.
    ns = argparse.Namespace(
        model_dir=args.model_dir, kvcache_gib=args.kvcache_gib, engine_cpus=None, vllm_cpus=None, side_cpus=None,
        vllm_python=args.vllm_python, max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
        predictor_timeout_ms=args.predictor_timeout_ms, fcfs_gateway=True, ranker_path=None, ranker_nice=None,
        ranker_name=None, predictor_backend="torch", predictor_threads=None, onnx_cache_dir=None, scorer="remote",
        fairness_windows=[args.fairness_window_s], prompt_length_weights=[0.0],
        startup_timeout_s=args.startup_timeout_s, predictor_url=None, ranker_max_length=None,
        ranker_truncation=None, ranker_pooling=None)
    vllm_url, (fcfs_url, new_url, old_url, oracle_url) = start_all(ns, servers, extra_gateways=extra)
    for name, (proc, url) in predictors.items():
        wait_up(proc, url, "/ready", args.startup_timeout_s, name)
    return {"vllm": vllm_url, "predictor": predictors["predictor"][1],
            "predictor-old": predictors["predictor-old"][1], "fcfs": fcfs_url, "pars-new": new_url,
            "pars-old": old_url, "oracle": oracle_url}


def given_urls(args: argparse.Namespace) -> dict[str, str]:
    """Without --start: the URLs the flags name."""
    return {"vllm": args.vllm_url, "predictor": args.predictor_url, "predictor-old": args.predictor_old_url,
            **{pol: getattr(args, flag) for pol, flag in URL_FLAGS.items()}}


def ranker_id(predictor_url: str) -> str | None:
    """The ranker a predictor service is serving now (its GET /)."""
    import httpx

    return httpx.get(predictor_url.rstrip("/") + "/", timeout=30).json().get("ranker_id")


def check_servers(urls: dict[str, str]) -> dict:
    """Each gateway's /gateway/health with its scorer checked, and both predictors' ranker: the same before the
    loop. SystemExit in one line otherwise."""
    from experiments.vllm_e2e.client import gateway_health

    health = {}
    for name in POLICIES:
        health[name] = gateway_health(urls[name])
        if health[name].get("scorer") not in SCORERS[name]:
            raise SystemExit(f"the {name} gateway at {urls[name]} has GATEWAY_SCORER={health[name].get('scorer')}, "
                             f"not {SCORERS[name][0]}")
    ids = {name: ranker_id(urls[name]) for name in ("predictor", "predictor-old")}
    if ids["predictor"] is None or ids["predictor"] != ids["predictor-old"]:
        raise SystemExit(f"predictors A ({urls['predictor']}) and B ({urls['predictor-old']}) must serve the same "
                         f"deployed ranker before the loop; their ranker_id: {ids['predictor']}, "
                         f"{ids['predictor-old']}")
    return {"gateways": health, "ranker_id": ids}
