"""The client side of a run: each request sent at its arrival and timed (TTFT when streamed), the idle probe
of the gateways' own latency, the priming of their score windows, the capacity burst, and what vLLM and the
gateways say about themselves."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.lib.stats import dist
from experiments.lib.traces import Request
from experiments.vllm_e2e.policies import Policy, body_of


@dataclass
class Result:
    index: int
    status: int
    sent_s: float  # offset from the run's start
    lag_ms: float  # how late it was sent against its scheduled arrival (client distortion)
    latency_s: float | None
    ttft_s: float | None
    completion_tokens: int | None
    priority: int | None
    source: str | None
    score_ms: float | None
    error: str | None = None


async def send_one(client: Any, url: str, body: bytes, stream: bool) -> tuple[int, dict | None, dict, float | None]:
    """Status, the JSON answer (or the usage of a stream), the response headers, TTFT (stream only)."""
    headers = {"Content-Type": "application/json"}
    if not stream:
        r = await client.post(url + "/v1/completions", content=body, headers=headers)
        return r.status_code, (r.json() if r.status_code == 200 else None), dict(r.headers), None
    started = time.perf_counter()
    ttft = None
    usage = None
    async with client.stream("POST", url + "/v1/completions", content=body, headers=headers) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[6:].strip()
            if payload == "[DONE]":
                break
            obj = json.loads(payload)
            if ttft is None and obj.get("choices"):
                ttft = time.perf_counter() - started
            if obj.get("usage"):
                usage = obj["usage"]
        return r.status_code, ({"usage": usage} if r.status_code == 200 else None), dict(r.headers), ttft


async def run_cell(policy: Policy, trace: Sequence[Request], arrivals: Sequence[float], model: str, stream: bool,
                   desc: str, quiet: bool) -> tuple[list[Result], float]:
    """Replay the trace once: each request sent at its arrival offset, all awaited; returns the results in
    trace order and the run's makespan (first scheduled arrival to last answer)."""
    import httpx
    from tqdm import tqdm

    from pars.common.httpclient import pool_limits

    bodies = [body_of(policy, r, model, stream) for r in trace]
    # No pool limit: a limit would queue requests in the client, in arrival order, where vLLM cannot see them.
    limits = pool_limits(None, len(trace))
    bar = tqdm(total=len(trace), desc=desc, leave=False, disable=quiet, mininterval=1.0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0), limits=limits) as client:
        t0 = time.perf_counter() + 0.05  # every task is created before the first is due

        async def one(i: int) -> Result:
            await asyncio.sleep(max(0.0, t0 + arrivals[i] - time.perf_counter()))
            sent = time.perf_counter()
            lag_ms = (sent - t0 - arrivals[i]) * 1000
            try:
                status, data, headers, ttft = await send_one(client, policy.url, bodies[i], stream)
                error = None
            except (httpx.HTTPError, ValueError) as exc:
                status, data, headers, ttft, error = -1, None, {}, None, f"{type(exc).__name__}: {exc}"
            end = time.perf_counter()
            bar.update(1)
            ok = status == 200 and data is not None
            usage = (data or {}).get("usage") or {}
            prio = headers.get("x-pars-priority")
            score = headers.get("x-pars-score-ms")
            return Result(i, status, sent - t0, lag_ms, end - sent if ok else None, ttft if ok else None,
                          usage.get("completion_tokens"),
                          int(prio) if prio is not None else policy.priority(trace[i]),
                          headers.get("x-pars-priority-source"), float(score) if score is not None else None,
                          error if error else (None if ok else f"HTTP {status}"))

        results = await asyncio.gather(*(one(i) for i in range(len(trace))))
        makespan = time.perf_counter() - t0
    bar.close()
    return list(results), makespan


async def probe(targets: dict[str, str], model: str, n: int, seed: int) -> dict[str, Any]:
    """Sequential 1-token requests, targets interleaved in a shuffled order each round, on an idle server:
    the gateway's own added latency is (latency - its reported scoring time) - direct latency, by percentile."""
    import httpx

    rng = random.Random(seed)
    lat: dict[str, list[float]] = {k: [] for k in targets}
    own: dict[str, list[float]] = {k: [] for k in targets}
    body = {"model": model, "prompt": "Write a short note about the history of Rome.", "max_tokens": 1,
            "ignore_eos": True, "temperature": 0.0}
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0)) as client:
        for _ in range(n):
            for name in rng.sample(list(targets), len(targets)):
                b = dict(body, priority=0) if name == "direct" else body
                started = time.perf_counter()
                r = await client.post(targets[name] + "/v1/completions", json=b)
                ms = (time.perf_counter() - started) * 1000
                if r.status_code != 200:
                    raise SystemExit(f"probe {name}: HTTP {r.status_code} {r.text[:200]}")
                lat[name].append(ms)
                own[name].append(ms - float(r.headers.get("x-pars-score-ms", 0.0)))
    direct = np.asarray(lat["direct"])
    out: dict[str, Any] = {"requests_per_target": n, "direct": dist(list(direct))}
    for name in targets:
        if name == "direct":
            continue
        o = np.asarray(own[name])
        out[name] = {"latency_ms": dist(lat[name]), "own_ms": dist(list(o)),
                     "overhead_p50_ms": float(np.percentile(o, 50) - np.percentile(direct, 50)),
                     "overhead_p90_ms": float(np.percentile(o, 90) - np.percentile(direct, 90)),
                     "score_ms_p50": float(np.percentile(np.asarray(lat[name]) - o, 50))}
    return out


async def prime(gateways: Sequence[Policy], trace: Sequence[Request], model: str, concurrency: int = 4) -> None:
    """Each trace prompt once through each pars gateway with max_tokens=1, before any measured run: fills the
    gateways' score windows (quantiles of a cold window are neutral) and vLLM's prefix cache, so the first
    measured run is not the only one with cold state."""
    import httpx

    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0)) as client:
        async def one(url: str, req: Request) -> None:
            async with sem:
                body = {"model": model, "prompt": req.prompt, "max_tokens": 1, "ignore_eos": True}
                r = await client.post(url + "/v1/completions", json=body)
                if r.status_code != 200:
                    raise SystemExit(f"priming {url}: HTTP {r.status_code} {r.text[:200]}")

        await asyncio.gather(*(one(g.url, req) for g in gateways for req in trace))


async def measure_capacity(url: str, model: str, trace: Sequence[Request], slots: int, tokens: int,
                           waves: int = 2) -> dict[str, float]:
    """vLLM's decode throughput with every slot busy: `waves` x `slots` trace prompts sent at once, each
    answered with exactly `tokens` tokens; output tokens per second over the burst's makespan. Divided by
    the trace's mean max_tokens it gives the requests/s the server sustains on this trace, which is what
    --load-factors scale: a load factor means the same on a fast day of the VM as on a slow one."""
    import httpx

    n = waves * slots
    reqs = [trace[i % len(trace)] for i in range(n)]
    async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0),
                                 limits=httpx.Limits(max_connections=n)) as client:
        async def one(req: Request) -> None:
            body = {"model": model, "prompt": req.prompt, "max_tokens": tokens, "ignore_eos": True,
                    "temperature": 0.0, "priority": 0}
            r = await client.post(url + "/v1/completions", json=body)
            if r.status_code != 200:
                raise SystemExit(f"capacity burst: HTTP {r.status_code} {r.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(one(r) for r in reqs))
        seconds = time.perf_counter() - started
    tps = n * tokens / seconds
    mean_tokens = float(np.mean([r.max_tokens for r in trace]))
    return {"requests": n, "tokens_each": tokens, "seconds": seconds, "tokens_per_s": tps,
            "trace_requests_per_s": tps / mean_tokens}


def new_fallbacks(before: dict, after: dict) -> dict[str, int]:
    """Fallbacks by reason between two /gateway/health answers (reasons with none left out)."""
    was, now = before.get("fallbacks_by_reason", {}), after.get("fallbacks_by_reason", {})
    return {k: v - was.get(k, 0) for k, v in now.items() if v != was.get(k, 0)}


def model_name(url: str) -> str:
    """The model vLLM serves, from its /v1/models."""
    import httpx

    return httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]


def gateway_health(url: str) -> dict:
    import httpx

    return httpx.get(url + "/gateway/health", timeout=30).json()
