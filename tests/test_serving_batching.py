"""The dynamic batcher, limits, readiness, auth, metrics and priorities of the predictor service.

Mostly through real HTTP on loopback (uvicorn started here, tiny model); no timing assertions. Where a
request must still be waiting when the next one arrives (429, 504, graceful shutdown), a long gathering
window (PREDICTOR_MAX_WAIT_MS) holds the first request in the queue.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import threading
import time

import httpx
import pytest
import torch
from serving_helpers import PROMPTS, start_server, wait_ready

from pars.model.scoring import PromptScorer
from pars.serving.batcher import DynamicBatcher
from pars.serving.engine import InferenceEngine, overhead_from_timings
from pars.serving.observability import Metrics


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def base_env(tiny_model_dir, checkpoint) -> dict[str, str]:
    return {"PREDICTOR_MODEL_PATH": str(checkpoint), "PREDICTOR_MODEL_NAME": str(tiny_model_dir),
            "PREDICTOR_MAX_LENGTH": "128", "PREDICTOR_DEVICE": "cpu", "PREDICTOR_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def server(base_env):
    """Batching on, a gathering window long enough for concurrent requests to share passes, small limits."""
    proc, url = start_server({**base_env, "PREDICTOR_MAX_WAIT_MS": "20", "PREDICTOR_MAX_BATCH_SIZE": "8",
                              "PREDICTOR_MAX_PROMPTS_PER_REQUEST": "16", "PREDICTOR_MAX_PROMPT_CHARS": "200"})
    try:
        wait_ready(proc, url)
        yield url
    finally:
        stop(proc)


def scores_alone(direct: PromptScorer, prompts: list[str]) -> list[float]:
    return [direct.score([p])[0] for p in prompts]


# --- batching correctness -------------------------------------------------------------------------


def test_overhead_fit_recovers_the_fixed_cost_and_clamps():
    a, b = 0.004, 0.0001  # 4 ms per pass, 0.1 ms per padded token: a pass costs as much as 40 tokens
    assert overhead_from_timings([(x, a + b * x) for x in (32, 256, 64, 512)]) == 40
    assert overhead_from_timings([(x, 0.01 - 1e-6 * x) for x in (32, 256)]) == 4096  # more tokens cost no more
    assert overhead_from_timings([(x, -0.001 + b * x) for x in (32, 256)]) == 0


class _TimedScorer:
    """A scorer whose passes take 20 ms + 0.05 ms per padded token of a fake clock."""

    def __init__(self, direct: PromptScorer) -> None:
        self.direct, self.now = direct, 0.0

    def __getattr__(self, name):
        return getattr(self.direct, name)

    def score_ids(self, ids):
        self.now += 0.020 + 0.00005 * len(ids) * max(len(x) for x in ids)
        return [0.0] * len(ids)


def test_warm_up_measures_the_forward_overhead_unless_it_is_set(direct, monkeypatch):
    import pars.serving.engine as engine

    fake = _TimedScorer(direct)
    monkeypatch.setattr(engine.time, "perf_counter", lambda: fake.now)
    measured = InferenceEngine(fake, Metrics(), max_batch_size=8, max_batch_tokens=4096, overhead_tokens=None)
    fixed = InferenceEngine(fake, Metrics(), max_batch_size=8, max_batch_tokens=4096, overhead_tokens=7)
    try:
        assert measured.overhead_tokens == engine.FORWARD_OVERHEAD_TOKENS  # until the warm-up
        measured.warm_up(rounds=1)
        fixed.warm_up(rounds=1)
    finally:
        measured.close()
        fixed.close()
    assert measured.overhead_tokens == 400 and fixed.overhead_tokens == 7  # 20 ms / 0.05 ms per token
    assert measured.metrics.forward_overhead_tokens._value.get() == 400


class _GatedEngine:
    """Stands in for the inference engine: records each round's prompt count; the first round holds until
    `gate` is set, so that work queues up behind it."""

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self.gate = asyncio.Event()
        self.rounds: list[int] = []

    def score_ids(self, ids):
        return [0.0] * len(ids)

    async def run(self, fn, ids):
        self.rounds.append(len(ids))
        if len(self.rounds) == 1:
            await self.gate.wait()
        return fn(ids)


def test_gathering_window_holds_an_idle_model_only():
    """With a backlog (requests queued while the model was busy) a round starts at once; the window
    (here 60 s) only makes an idle model wait for company."""

    async def main() -> None:
        engine = _GatedEngine()
        batcher = DynamicBatcher(engine, Metrics(), max_batch_size=2, max_batch_tokens=10_000, max_wait_s=60.0,
                                 max_queue_prompts=100)
        batcher.start()
        first = asyncio.create_task(batcher.score([[5, 6], [7]]))  # a full round: no window
        while not engine.rounds:
            await asyncio.sleep(0.01)
        queued = asyncio.create_task(batcher.score([[8]]))  # arrives while the model is busy
        await asyncio.sleep(0.05)
        engine.gate.set()
        assert await asyncio.wait_for(first, 10) == [0.0, 0.0]
        assert await asyncio.wait_for(queued, 10) == [0.0]  # not held for the 60 s window
        idle = asyncio.create_task(batcher.score([[9]]))  # the model is idle now: held for company
        await asyncio.sleep(0.3)
        assert not idle.done()
        company = asyncio.create_task(batcher.score([[10]]))  # fills the round
        assert await asyncio.wait_for(asyncio.gather(idle, company), 10) == [[0.0], [0.0]]
        assert engine.rounds == [2, 1, 2]
        await batcher.close()

    asyncio.run(main())


def test_a_second_worker_takes_a_round_while_the_first_is_busy_and_close_waits_for_both():
    async def main() -> None:
        engine = _GatedEngine(workers=2)
        batcher = DynamicBatcher(engine, Metrics(), max_batch_size=4, max_batch_tokens=10_000, max_wait_s=0.0,
                                 max_queue_prompts=100)
        batcher.start()
        held = asyncio.create_task(batcher.score([[5, 6], [7]]))  # the first round holds its worker
        while not engine.rounds:
            await asyncio.sleep(0.01)
        second = asyncio.create_task(batcher.score([[8]]))
        assert await asyncio.wait_for(second, 10) == [0.0]  # the other worker: not queued behind the held round
        third = asyncio.create_task(batcher.score([[9]]))
        await asyncio.sleep(0.05)
        closing = asyncio.create_task(batcher.close())
        await asyncio.sleep(0.05)
        assert not held.done() and not closing.done()  # close() waits for the running round
        engine.gate.set()
        await asyncio.wait_for(closing, 10)
        assert held.result() == [0.0, 0.0] and third.result() == [0.0]
        assert engine.rounds == [2, 1, 1]

    asyncio.run(main())


def test_an_engine_with_two_workers_runs_two_passes_at_once(direct):
    class _MeetingModel:
        """Each pass waits at a barrier for a second pass: passes run one at a time never get through."""

        def __init__(self) -> None:
            self.barrier = threading.Barrier(2, timeout=10)

        def score(self, input_ids, attention_mask):
            self.barrier.wait()
            return torch.zeros(len(input_ids))

    scorer = PromptScorer(_MeetingModel(), direct.tokenizer, max_length=16, device="cpu")
    engine = InferenceEngine(scorer, Metrics(), max_batch_size=8, max_batch_tokens=4096, overhead_tokens=7,
                             workers=2)
    try:
        passes = [engine.executor.submit(engine.score_ids, [[5, 6, 7]]) for _ in range(2)]
        assert [p.result(timeout=20) for p in passes] == [[0.0], [0.0]]
    finally:
        engine.close()


def test_batched_with_strangers_equals_alone(direct):
    engine = InferenceEngine(direct, Metrics(), max_batch_size=4, max_batch_tokens=10_000)
    try:
        ids = engine.encode(PROMPTS * 3)
        batched = engine.score_ids(ids)
        together = engine.score_as_one_batch(ids)
    finally:
        engine.close()
    alone = scores_alone(direct, PROMPTS * 3)
    assert batched == pytest.approx(alone, abs=1e-5)
    assert together == pytest.approx(alone, abs=1e-5)


def test_concurrent_requests_are_batched_and_score_as_alone(server, direct):
    async def fire() -> list[dict]:
        async with httpx.AsyncClient(base_url=server, timeout=30) as client:
            score = [client.post("/score", json={"prompt": p}) for p in PROMPTS * 4]
            batch = [client.post("/score_batch", json={"prompts": PROMPTS[i:] + PROMPTS[:i]}) for i in range(3)]
            responses = await asyncio.gather(*score, *batch)
        assert all(r.status_code == 200 for r in responses)
        return [r.json() for r in responses]

    before = metric(server, "pars_batch_size_prompts_sum")
    bodies = asyncio.run(fire())
    alone = dict(zip(PROMPTS, scores_alone(direct, PROMPTS), strict=True))
    for body in bodies[: len(PROMPTS) * 4]:
        assert body["score"] == pytest.approx(alone[body["prompt"]], abs=1e-5)
    for body in bodies[len(PROMPTS) * 4 :]:
        assert body["scores"] == pytest.approx([alone[p] for p in body["prompts"]], abs=1e-5)
    assert metric(server, "pars_batch_size_prompts_sum") == before + len(PROMPTS) * 7


def test_two_inference_workers_score_concurrent_requests_as_alone(base_env, direct):
    proc, url = start_server({**base_env, "PREDICTOR_INFERENCE_WORKERS": "2", "PREDICTOR_NUM_THREADS": "2"})

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return await asyncio.gather(*(client.post("/score", json={"prompt": p}) for p in PROMPTS * 6))

    try:
        wait_ready(proc, url)
        responses = asyncio.run(fire())
        assert all(r.status_code == 200 for r in responses)
        alone = dict(zip(PROMPTS, scores_alone(direct, PROMPTS), strict=True))
        for r in responses:
            assert r.json()["score"] == pytest.approx(alone[r.json()["prompt"]], abs=1e-5)
    finally:
        stop(proc)


def test_per_request_mode_scores_the_same(base_env, direct):
    proc, url = start_server({**base_env, "PREDICTOR_BATCHING": "off"})
    try:
        wait_ready(proc, url)
        body = httpx.post(url + "/score_batch", json={"prompts": PROMPTS}).json()
        assert body["scores"] == pytest.approx(direct.score(PROMPTS), abs=1e-5)
        assert httpx.post(url + "/score", json={"prompt": "yes"}).json()["score"] == pytest.approx(
            direct.score(["yes"])[0], abs=1e-5)
    finally:
        stop(proc)


# --- limits and error bodies ------------------------------------------------------------------------


def assert_error(response: httpx.Response, status: int, error: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["message"], str) and body["message"]
    if error is not None:
        assert body["error"] == error
    return body


def test_too_many_prompts_is_413(server):
    body = assert_error(httpx.post(server + "/score_batch", json={"prompts": ["yes"] * 17}), 413, "too_many_prompts")
    assert "16" in body["message"]
    assert_error(httpx.post(server + "/compare_batch", json={"pairs": [{"prompt_a": "a", "prompt_b": "b"}] * 9}),
                 413, "too_many_prompts")
    assert httpx.post(server + "/score_batch", json={"prompts": ["yes"] * 16}).status_code == 200


def test_too_long_prompt_is_cut_and_scored(server):
    prompt = ("write " * 40)[:200]  # PREDICTOR_MAX_PROMPT_CHARS
    capped = httpx.post(server + "/score", json={"prompt": prompt}).json()["score"]
    longer = httpx.post(server + "/score", json={"prompt": prompt + " essay"}).json()
    assert longer["prompt"] == prompt + " essay" and longer["score"] == pytest.approx(capped, abs=1e-6)
    pair = httpx.post(server + "/compare", json={"prompt_a": "yes", "prompt_b": prompt + " essay"})
    assert pair.status_code == 200 and pair.json()["score_b"] == pytest.approx(capped, abs=1e-6)


def test_malformed_and_wrong_types_are_422_json(server):
    body = assert_error(httpx.post(server + "/score", json={"prompt": 5}), 422, "invalid_request")
    assert "prompt" in body["message"] and body["detail"]
    assert_error(httpx.post(server + "/score_batch", json={"prompts": "not a list"}), 422)
    assert_error(httpx.post(server + "/score", content=b"{not json", headers={"content-type": "application/json"}),
                 422)
    assert_error(httpx.post(server + "/compare", json={"prompt_a": "only one"}), 422)


def test_unknown_path_is_json_404(server):
    assert_error(httpx.get(server + "/nope"), 404, "not_found")


def test_full_queue_is_429_and_slow_request_is_504(base_env):
    # The first request waits out the 1.5 s gathering window in the queue: meanwhile the queue
    # (2 prompts) has no room for 2 more, and its own 0.5 s timeout expires.
    proc, url = start_server({**base_env, "PREDICTOR_MAX_WAIT_MS": "1500", "PREDICTOR_MAX_QUEUE_PROMPTS": "2",
                              "PREDICTOR_REQUEST_TIMEOUT_S": "0.5"})
    try:
        wait_ready(proc, url)

        async def scenario() -> tuple[httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                first = asyncio.create_task(client.post("/score", json={"prompt": "yes"}))
                await asyncio.sleep(0.2)
                second = await client.post("/score_batch", json={"prompts": ["a", "b"]})
                return await first, second

        first, second = asyncio.run(scenario())
        assert_error(second, 429, "queue_full")
        assert_error(first, 504, "timeout")
        # the service recovers: a request alone waits out the window, within a longer timeout
        assert httpx.get(url + "/health").status_code == 200
        text = httpx.get(url + "/metrics").text
        assert 'pars_request_errors_total{endpoint="/score",status="504"} 1.0' in text
        assert 'pars_request_errors_total{endpoint="/score_batch",status="429"} 1.0' in text
    finally:
        stop(proc)


# --- readiness and shutdown -----------------------------------------------------------------------------


def test_ready_is_503_until_warm_up_is_done(monkeypatch, tiny_model_dir, checkpoint):
    from fastapi.testclient import TestClient

    from pars.serving.app import create_app
    from pars.serving.settings import Settings

    gate, started = threading.Event(), threading.Event()
    real_warm_up = InferenceEngine.warm_up

    def slow_warm_up(self, rounds: int = 2) -> None:
        started.set()
        assert gate.wait(30)
        real_warm_up(self, rounds)

    monkeypatch.setattr(InferenceEngine, "warm_up", slow_warm_up)
    app = create_app(Settings(model_path=str(checkpoint), model_name=str(tiny_model_dir), device="cpu",
                              num_threads=1))
    with TestClient(app) as client:
        assert started.wait(30)
        assert client.get("/health").json() == {"status": "ok"}
        r = client.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "warming_up"
        assert "pars_ready 0.0" in client.get("/metrics").text
        gate.set()
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert client.get("/ready").json()["status"] == "ready"
        assert "pars_ready 1.0" in client.get("/metrics").text


def test_graceful_shutdown_finishes_queued_work(base_env, direct):
    # Requests sit in a 1 s gathering window when SIGTERM arrives; they must still be answered.
    proc, url = start_server({**base_env, "PREDICTOR_MAX_WAIT_MS": "1000"})
    wait_ready(proc, url)

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            tasks = [asyncio.create_task(client.post("/score", json={"prompt": p})) for p in PROMPTS]
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    try:
        responses = asyncio.run(scenario())
        assert [r.status_code for r in responses] == [200] * len(PROMPTS)
        assert [r.json()["score"] for r in responses] == pytest.approx(scores_alone(direct, PROMPTS), abs=1e-5)
        # a clean exit (recent uvicorn re-raises the signal after its graceful shutdown)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Traceback" not in proc.stdout.read()
    finally:
        stop(proc)


def test_half_precision_on_cpu_stops_startup_with_one_line(base_env):
    proc, _ = start_server({**base_env, "PREDICTOR_DTYPE": "float16"})
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode != 0 and "Traceback" not in out
    lines = [ln for ln in out.splitlines() if "PARS predictor cannot start" in ln]
    assert len(lines) == 1 and "CUDA" in lines[0]


# --- auth ---------------------------------------------------------------------------------------------


def test_api_key_required_when_set(base_env):
    proc, url = start_server({**base_env, "PREDICTOR_API_KEY": "s3cret"})
    try:
        wait_ready(proc, url)  # /ready is open
        assert httpx.get(url + "/health").status_code == 200
        assert_error(httpx.post(url + "/score", json={"prompt": "yes"}), 401, "unauthorized")
        assert_error(httpx.post(url + "/score", json={"prompt": "yes"}, headers={"Authorization": "Bearer nope"}),
                     401)
        assert_error(httpx.post(url + "/score", json={"prompt": "yes"}, headers={"Authorization": "s3cret"}), 401)
        assert_error(httpx.get(url + "/metrics"), 401)
        ok = {"Authorization": "Bearer s3cret"}
        assert httpx.post(url + "/score", json={"prompt": "yes"}, headers=ok).status_code == 200
        assert httpx.get(url + "/", headers=ok).status_code == 200
        assert 'status="401"' in httpx.get(url + "/metrics", headers=ok).text
    finally:
        stop(proc)


def test_no_api_key_means_open(server):
    assert httpx.post(server + "/score", json={"prompt": "yes"}).status_code == 200
    assert httpx.get(server + "/metrics").status_code == 200


# --- metrics and priorities -----------------------------------------------------------------------------


def metric(url: str, name: str, labels: str = "") -> float:
    text = httpx.get(url + "/metrics").text
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)"
    found = re.search(r"^" + pattern + "$", text, flags=re.M)
    return float(found.group(1)) if found else 0.0


def test_metrics_present_and_moving(server):
    text = httpx.get(server + "/metrics").text
    for name in ("pars_requests_total", "pars_request_errors_total", "pars_request_duration_seconds",
                 "pars_queue_depth_prompts", "pars_queue_wait_seconds", "pars_batch_size_prompts",
                 "pars_batch_tokens", "pars_inference_seconds", "pars_ready"):
        assert f"# TYPE {name} " in text
    ok = 'endpoint="/score",status="200"'
    before = {
        "requests": metric(server, "pars_requests_total", ok),
        "forwards": metric(server, "pars_inference_seconds_count"),
        "tokens": metric(server, "pars_batch_tokens_sum"),
        "waits": metric(server, "pars_queue_wait_seconds_count"),
        "errors": metric(server, "pars_request_errors_total", 'endpoint="/score",status="422"'),
    }
    httpx.post(server + "/score", json={"prompt": "write a long essay"})
    httpx.post(server + "/score", json={"prompt": 1})
    assert metric(server, "pars_requests_total", ok) == before["requests"] + 1
    assert metric(server, "pars_inference_seconds_count") > before["forwards"]
    assert metric(server, "pars_batch_tokens_sum") > before["tokens"]
    assert metric(server, "pars_queue_wait_seconds_count") == before["waits"] + 1
    assert metric(server, "pars_request_errors_total", 'endpoint="/score",status="422"') == before["errors"] + 1
    assert metric(server, "pars_queue_depth_prompts") == 0
    assert metric(server, "pars_ready") == 1


def test_priorities_follow_scores(server):
    body = httpx.post(server + "/score_batch", json={"prompts": PROMPTS, "return_priorities": True}).json()
    scores, priorities = body["scores"], body["priorities"]
    assert len(priorities) == len(PROMPTS) and all(isinstance(p, int) for p in priorities)
    assert priorities == [round(s * 1000) for s in scores]  # the documented map, PREDICTOR_PRIORITY_SCALE=1000
    by_score = sorted(range(len(scores)), key=scores.__getitem__)
    assert [priorities[i] for i in by_score] == sorted(priorities)  # longer predicted response, larger number
    # the same prompt gets the same priority in another request (the map does not depend on the batch)
    again = httpx.post(server + "/score_batch", json={"prompts": PROMPTS[:2], "return_priorities": True}).json()
    assert again["priorities"] == pytest.approx(priorities[:2], abs=1)
    assert "priorities" not in httpx.post(server + "/score_batch", json={"prompts": PROMPTS}).json()
