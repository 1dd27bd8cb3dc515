"""The gateway's own added latency (issue 6's target: at most 5 ms p50 on top of the predictor's scoring time).

Starts, each under uvicorn on 127.0.0.1: a stand-in upstream that answers /v1/completions at once with a
vLLM-shaped body, a stand-in predictor whose /score_batch answers at once, and gateways in front of the
upstream: `neutral` (GATEWAY_SCORER=none: body rewritten, no scoring), `scored` (GATEWAY_SCORER=remote,
the stand-in predictor) and, with --model-path/--model-name, `ranker` (GATEWAY_SCORER=local, the real
ranker in the gateway's process). One client sends requests one at a time over keep-alive connections,
the targets interleaved in a shuffled order each round, so load changes hit every target alike.

    nice -n 19 .venv/bin/python benchmarks/gateway_bench.py --rounds 1500

The gateway's overhead is the latency through it minus the direct latency; for scored targets the
scoring time the gateway reports (x-pars-score-ms) is subtracted per request first. Prints a table and
writes benchmarks/results/gateway_bench.json with the machine's load average at start and end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

from pars.common.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gateway_bench.json"

COMPLETION = {"id": "cmpl-0", "object": "text_completion", "created": 0, "model": "stand-in",
              "choices": [{"index": 0, "text": " a short answer of a few tokens", "logprobs": None,
                           "finish_reason": "length", "stop_reason": None}],
              "usage": {"prompt_tokens": 12, "total_tokens": 28, "completion_tokens": 16}}


CHAT_COMPLETION = {"id": "chatcmpl-0", "object": "chat.completion", "created": 0, "model": "stand-in",
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "a short answer"},
                                "finish_reason": "length"}],
                   "usage": {"prompt_tokens": 12, "total_tokens": 28, "completion_tokens": 16}}


def stand_in_app(kind: str):
    """The upstream (answers completions and chat completions at once) or the predictor (/score_batch,
    score = length)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    body = json.dumps(COMPLETION).encode()
    chat_body = json.dumps(CHAT_COMPLETION).encode()

    async def completions(request: Request):
        await request.body()
        return Response(body, media_type="application/json")

    async def chat(request: Request):
        await request.body()
        return Response(chat_body, media_type="application/json")

    async def score_batch(request: Request):
        prompts = (await request.json())["prompts"]
        return JSONResponse({"prompts": prompts, "scores": [float(len(p)) for p in prompts]})

    if kind == "upstream":
        return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                                 Route("/v1/chat/completions", chat, methods=["POST"])])
    return Starlette(routes=[Route("/score_batch", score_batch, methods=["POST"])])


def start(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    out = open(log, "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, *args, "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning", "--no-access-log"],
                            cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_up(proc: subprocess.Popen, url: str, path: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a server exited early (code {proc.returncode}); see its log in /tmp")
        try:
            if httpx.get(url + path, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not come up")


def load_prompts(path: Path | None, n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    if path is not None:
        rows = json.loads(path.read_text(encoding="utf-8"))
        prompts = [r["prompt"] for r in rows if isinstance(r.get("prompt"), str) and r["prompt"].strip()]
        rng.shuffle(prompts)
        return prompts[:n]
    words = "write explain list summarize a short long essay story poem code about history of rome math".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 200))) for _ in range(n)]


class Target:
    """One keep-alive connection to a server; `post` returns (seconds, scoring ms the gateway reported)."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.latencies: list[float] = []
        self.score_ms: list[float] = []

    def post(self, body: bytes) -> None:
        started = time.perf_counter()
        self.conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200 or not data:
            raise SystemExit(f"{self.name}: HTTP {response.status}")
        self.latencies.append(elapsed * 1000)
        self.score_ms.append(float(response.getheader("x-pars-score-ms") or 0.0))


def pct(values, q) -> float:
    return float(np.percentile(values, q))


def summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": pct(ms, 50), "p90_ms": pct(ms, 90), "p99_ms": pct(ms, 99),
            "mean_ms": float(np.mean(ms))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1500, help="measured requests per target")
    parser.add_argument("--warmup", type=int, default=100, help="unmeasured rounds first")
    parser.add_argument("--data", type=Path, help="val_data.json with real prompts (default: synthetic)")
    parser.add_argument("--model-path", help="with --model-name: also a gateway with the ranker in-process")
    parser.add_argument("--model-name")
    parser.add_argument("--predictor-timeout-ms", type=float, default=1000.0,
                        help="generous here: a fallback would hide the scoring time being measured")
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. what else ran on the machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", choices=["upstream", "predictor"], help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--log-level", help=argparse.SUPPRESS)
    parser.add_argument("--no-access-log", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:  # a child process: one stand-in server
        import uvicorn

        uvicorn.run(stand_in_app(args.serve), host=args.host, port=args.port, log_level="warning", access_log=False)
        return

    load_start = os.getloadavg()
    procs: list[subprocess.Popen] = []
    logs = Path("/tmp")
    me = [str(Path(__file__).resolve())]
    gateway = ["-m", "uvicorn", "scripts.pars_gateway:app"]
    try:
        up, up_url = start(me + ["--serve", "upstream"], {}, ROOT, logs / "gw_bench_upstream.log")
        pr, pr_url = start(me + ["--serve", "predictor"], {}, ROOT, logs / "gw_bench_predictor.log")
        procs += [up, pr]
        base = {"GATEWAY_UPSTREAM_URL": up_url, "GATEWAY_PREDICTOR_URL": pr_url,
                "GATEWAY_PREDICTOR_TIMEOUT_MS": str(args.predictor_timeout_ms)}
        gateways = {"neutral": {**base, "GATEWAY_SCORER": "none"}, "scored": {**base, "GATEWAY_SCORER": "remote"}}
        if args.model_path and args.model_name:
            # The gateway runs in predictor_serving/: the checkpoint path must not be relative to here.
            gateways["ranker"] = {**base, "GATEWAY_SCORER": "local",
                                  "PREDICTOR_MODEL_PATH": str(Path(args.model_path).resolve()),
                                  "PREDICTOR_MODEL_NAME": args.model_name, "PREDICTOR_DEVICE": "cpu"}
        urls = {"direct": up_url}
        for name, env in gateways.items():
            proc, urls[name] = start(gateway, env, ROOT / "predictor_serving", logs / f"gw_bench_{name}.log")
            procs.append(proc)
        for proc, url in zip(procs, [up_url, pr_url, *list(urls.values())[1:]], strict=True):
            wait_up(proc, url, "/gateway/health" if url not in (up_url, pr_url) else "/")

        prompts = load_prompts(args.data, 500, args.seed)
        bodies = [json.dumps({"model": "stand-in", "prompt": p, "max_tokens": 16, "temperature": 0.0}).encode()
                  for p in prompts]
        targets = [Target(name, url) for name, url in urls.items()]
        rng = random.Random(args.seed)
        started = time.time()
        for r in range(args.warmup + args.rounds):
            if r == args.warmup:
                for t in targets:
                    t.latencies.clear()
                    t.score_ms.clear()
            body = bodies[r % len(bodies)]
            for t in rng.sample(targets, len(targets)):
                t.post(body)
        seconds = time.time() - started
        fallbacks = {name: httpx.get(url + "/gateway/health").json()["fallbacks"]
                     for name, url in urls.items() if name != "direct"}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    load_end = os.getloadavg()

    by_name = {t.name: t for t in targets}
    direct = by_name["direct"].latencies
    cells = {}
    for t in targets:
        cell = {"latency": summary(t.latencies)}
        if t.name != "direct":
            own = [lat - s for lat, s in zip(t.latencies, t.score_ms, strict=True)]
            cell["scoring_ms"] = summary(t.score_ms)
            cell["latency_minus_scoring"] = summary(own)
            cell["overhead_vs_direct_ms"] = {f"p{q}": pct(own, q) - pct(direct, q) for q in (50, 90, 99)}
            cell["fallbacks"] = fallbacks[t.name]
        cells[t.name] = cell

    print(f"{args.rounds} requests per target, sequential, interleaved; {seconds:.0f} s; "
          f"load {load_start[0]:.2f} -> {load_end[0]:.2f}")
    print(f"{'target':<9} {'p50':>7} {'p90':>7} {'p99':>7} | {'score p50':>9} | "
          f"{'own p50':>7} {'own p90':>7} {'own p99':>7} | {'overhead p50/p90/p99 (ms)':>26}")
    for name, cell in cells.items():
        lat = cell["latency"]
        row = f"{name:<9} {lat['p50_ms']:7.2f} {lat['p90_ms']:7.2f} {lat['p99_ms']:7.2f} |"
        if name == "direct":
            row += f" {'':>9} | {'':>7} {'':>7} {'':>7} |"
        else:
            own, over = cell["latency_minus_scoring"], cell["overhead_vs_direct_ms"]
            row += (f" {cell['scoring_ms']['p50_ms']:9.2f} | {own['p50_ms']:7.2f} {own['p90_ms']:7.2f} "
                    f"{own['p99_ms']:7.2f} | {over['p50']:8.2f} {over['p90']:8.2f} {over['p99']:8.2f}")
        print(row)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "when_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "niceness": os.nice(0),
        "load_average_start": load_start, "load_average_end": load_end,
        "note": args.note,
        "method": ("one client, one request at a time over keep-alive connections (http.client), targets "
                   "interleaved in a shuffled order each round; stand-in upstream answers at once; overhead = "
                   "percentile of (latency through the gateway - its x-pars-score-ms) minus the same percentile "
                   "of the direct latency"),
        "rounds": args.rounds, "warmup": args.warmup, "seconds": seconds,
        "prompts": "val_data.json" if args.data else "synthetic, 3-200 words",
        "predictor_timeout_ms": args.predictor_timeout_ms,
        "target_overhead_p50_ms": 5.0,
        "cells": cells,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
