"""The gateway (pars/gateway) through HTTP, between a client and a stand-in upstream that records what it receives.

The upstream and the stand-in predictor are tiny Starlette apps served by uvicorn on loopback, in
threads of this process; so is the gateway. Nothing here depends on timing: the streaming test waits on
an event the client sets, not on a clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time

import httpx
import pytest
from serving_helpers import ROOT, free_port, gateway_factory, serve, serve_stand_in
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from pars.gateway.app import create_app
from pars.gateway.observability import GatewayMetrics
from pars.gateway.policy import Prioritizer
from pars.gateway.priority import PriorityClock
from pars.gateway.settings import GatewaySettings

BIG_WINDOW_S = 1000.0  # W = 1e6 ms: arrival-time differences inside a test are negligible beside it
SSE_EVENTS = 5


class Upstream:
    """Stands in for vLLM's OpenAI server: records every request, answers completions with JSON or SSE."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.client_saw_first = threading.Event()
        self.first_seen_before_last: bool | None = None
        self.app = Starlette(routes=[Route("/{path:path}", self.handle,
                                           methods=["GET", "POST", "PUT", "DELETE", "PATCH"])])

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        self.received.append({"method": request.method, "path": request.url.path, "query": request.url.query,
                              "headers": dict(request.headers), "body": body})
        path = request.url.path
        if path in ("/v1/completions", "/v1/chat/completions") and request.method == "POST":
            try:
                parsed = json.loads(body)
            except ValueError:
                return JSONResponse({"error": {"message": "bad json"}}, status_code=400)
            if parsed.get("stream"):
                return StreamingResponse(self.events(), media_type="text/event-stream")
            return JSONResponse({"object": "text_completion", "priority_seen": parsed.get("priority")},
                                headers={"x-upstream": "vllm-ish"})
        if path == "/v1/models":
            return JSONResponse({"data": [{"id": "tiny"}], "query": request.url.query},
                                headers={"x-upstream": "vllm-ish"})
        if path == "/health":
            return Response(status_code=200)
        if path == "/echo":
            return Response(body, status_code=201, media_type="application/octet-stream")
        return JSONResponse({"detail": "Not Found"}, status_code=404)

    async def events(self):
        for i in range(SSE_EVENTS - 1):
            yield f'data: {{"i": {i}}}\n\n'.encode()
            await asyncio.sleep(0.01)
        # The last event waits until the client has read the first one through the gateway: a gateway
        # that buffered the answer would leave this waiting until the timeout.
        self.first_seen_before_last = await asyncio.to_thread(self.client_saw_first.wait, 10)
        yield f'data: {{"i": {SSE_EVENTS - 1}}}\n\n'.encode()
        yield b"data: [DONE]\n\n"

    def last(self) -> dict:
        return self.received[-1]


class Predictor:
    """Stands in for the predictor service's /score_batch: score = prompt length in characters."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.calls: list[list[str]] = []
        self.app = Starlette(routes=[Route("/score_batch", self.score_batch, methods=["POST"])])

    async def score_batch(self, request: Request) -> Response:
        prompts = (await request.json())["prompts"]
        self.calls.append(prompts)
        if self.mode == "slow":
            await asyncio.sleep(1.0)
        if self.mode == "error":
            return JSONResponse({"error": "internal_error", "message": "boom"}, status_code=500)
        return JSONResponse({"prompts": prompts, "scores": [float(len(p)) for p in prompts]})


@pytest.fixture(scope="module")
def upstream():
    with serve_stand_in(Upstream()) as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def predictor():
    with serve_stand_in(Predictor()) as stand_in:
        yield stand_in


@pytest.fixture()
def gateway(upstream, predictor):
    """A factory: a gateway with the given settings, in front of the stand-ins."""
    predictor.mode = "ok"
    return gateway_factory(upstream, predictor, fairness_window_s=BIG_WINDOW_S)


def complete(url: str, prompt, **fields) -> httpx.Response:
    response = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": prompt, **fields}, timeout=30)
    assert response.status_code == 200, response.text
    return response


def calibrate(url: str) -> None:
    """Fill the quantile window with scores 10..100, so later prompts get quantiles spread over [0, 1]."""
    for n in range(10, 101, 10):
        complete(url, "x" * n)


def sent_priority(upstream: Upstream) -> int:
    return json.loads(upstream.last()["body"])["priority"]


# ---------------------------------------------------------------- through HTTP: priorities


def test_longer_predicted_prompt_gets_larger_priority_even_when_it_arrives_first(gateway, upstream):
    with gateway() as url:
        calibrate(url)
        long_reply = complete(url, "y" * 95)
        long_priority = sent_priority(upstream)
        short_reply = complete(url, "y" * 15)
        short_priority = sent_priority(upstream)
    assert short_priority < long_priority  # the later, shorter request is served first
    assert int(long_reply.headers["x-pars-priority"]) == long_priority
    assert int(short_reply.headers["x-pars-priority"]) == short_priority
    assert long_reply.headers["x-pars-priority-source"] == "scored"
    assert float(short_reply.headers["x-pars-score-ms"]) >= 0
    assert long_reply.json()["priority_seen"] == long_priority  # the upstream's answer came back as is


def test_body_forwarded_byte_for_byte_but_priority(gateway, upstream):
    raw = ('  {"model" :"tiny",\n "prompt": "caf\\u00e9 \u00e9t\u00e9 \\ud83d\\ude00", "temperature": 1.00,'
           ' "max_tokens": 1e2, "extra": {"priority": 3, "nested": [1, 2.50, null]}, "logit_bias": {}}  ').encode()
    headers = {"content-type": "application/json", "authorization": "Bearer sk-test", "x-request-id": "r-1"}
    with gateway() as url:
        response = httpx.post(url + "/v1/completions?trace=1", content=raw, headers=headers)
    assert response.status_code == 200
    got = upstream.last()
    priority = int(response.headers["x-pars-priority"])
    at = raw.index(b"{") + 1
    assert got["body"] == raw[:at] + f'"priority": {priority}, '.encode() + raw[at:]
    assert got["query"] == "trace=1"
    assert got["headers"]["authorization"] == "Bearer sk-test" and got["headers"]["x-request-id"] == "r-1"
    assert got["headers"]["content-length"] == str(len(got["body"]))
    assert response.headers["x-upstream"] == "vllm-ish" and response.headers["content-type"] == "application/json"


def test_chat_scores_the_last_user_message_text(gateway, upstream, predictor):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": [{"type": "text", "text": "part one"},
                                             {"type": "image_url", "image_url": {"url": "data:,"}},
                                             {"type": "text", "text": "part two"}]}]
    with gateway() as url:
        before = len(predictor.calls)
        response = httpx.post(url + "/v1/chat/completions", json={"model": "tiny", "messages": messages})
    assert response.status_code == 200 and response.headers["x-pars-priority-source"] == "scored"
    assert predictor.calls[before:] == [["part one\npart two"]]
    sent = json.loads(upstream.last()["body"])
    assert sent["messages"] == messages and sent["priority"] == int(response.headers["x-pars-priority"])


def test_lone_surrogate_in_a_chat_prompt_is_scored_and_forwarded_unchanged(gateway, upstream, predictor):
    """JSON may carry a lone surrogate, which no tokenizer (nor UTF-8) takes: the text scored has it replaced
    (pars.common.text.scoreable), the body forwarded keeps the client's bytes."""
    raw = b'{"model": "tiny", "messages": [{"role": "user", "content": "broken \\ud800 text"}]}'
    with gateway() as url:
        before = len(predictor.calls)
        response = httpx.post(url + "/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200 and response.headers["x-pars-priority-source"] == "scored"
    assert predictor.calls[before:] == [["broken \ufffd text"]]
    priority = response.headers["x-pars-priority"].encode()
    assert upstream.last()["body"] == b'{"priority": ' + priority + b", " + raw[1:]


def test_token_id_prompt_is_forwarded_neutral_without_scoring(gateway, upstream, predictor):
    with gateway() as url:
        before = len(predictor.calls)
        response = complete(url, [[1, 2, 3]])
    assert len(predictor.calls) == before
    assert response.headers["x-pars-priority-source"] == "unscorable"
    assert_neutral(sent_priority(upstream))


def assert_neutral(priority: int) -> None:
    """Neutral: quantile 0.5, so W/2 plus the arrival time (wall-clock ms, within the last minute here)."""
    arrival_ms = priority - BIG_WINDOW_S * 1000 / 2
    assert time.time() * 1000 - 60_000 <= arrival_ms <= time.time() * 1000


# ---------------------------------------------------------------- streams and pass-through


def test_sse_stream_relayed_chunk_by_chunk(gateway, upstream):
    upstream.client_saw_first.clear()
    upstream.first_seen_before_last = None
    events = []
    with gateway() as url, httpx.stream("POST", url + "/v1/completions", timeout=30,
                                        json={"model": "tiny", "prompt": "tell a story", "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-pars-priority-source"] == "scored"
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
                upstream.client_saw_first.set()
    assert upstream.first_seen_before_last is True  # the first event arrived before the last was sent
    assert events == [json.dumps({"i": i}) for i in range(SSE_EVENTS)] + ["[DONE]"]


def test_other_routes_pass_through(gateway, upstream):
    with gateway() as url:
        models = httpx.get(url + "/v1/models?limit=2")
        assert models.status_code == 200 and models.json() == {"data": [{"id": "tiny"}], "query": "limit=2"}
        assert models.headers["x-upstream"] == "vllm-ish" and "x-pars-priority" not in models.headers
        assert upstream.last()["method"] == "GET" and upstream.last()["body"] == b""
        assert httpx.get(url + "/health").status_code == 200
        missing = httpx.get(url + "/v1/nothing-here")
        assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
        payload = bytes(range(256)) * 100
        echoed = httpx.put(url + "/echo", content=payload)
        assert echoed.status_code == 201 and echoed.content == payload and upstream.last()["body"] == payload
        # GET on a scored path, and a POST whose body is not JSON, go through untouched
        assert httpx.get(url + "/v1/completions").status_code == 404
        bad = httpx.post(url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400 and upstream.last()["body"] == b"{not json"
        assert bad.headers["x-pars-priority-source"] == "unparsed"


def test_concurrent_requests_all_forwarded_with_their_own_priority(gateway, upstream, predictor):
    prompts = [f"prompt number {i} " + "w" * (7 * i) for i in range(24)]

    async def send_all(url):
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.post(url + "/v1/completions", json={"prompt": p, "stream": False})
                                          for p in prompts))

    with gateway() as url:
        before, calls_before = len(upstream.received), len(predictor.calls)
        replies = asyncio.run(send_all(url))
    assert all(r.status_code == 200 and r.headers["x-pars-priority-source"] == "scored" for r in replies)
    got = {json.loads(r["body"])["prompt"]: json.loads(r["body"])["priority"] for r in upstream.received[before:]}
    assert got == {p: int(r.headers["x-pars-priority"]) for p, r in zip(prompts, replies, strict=True)}
    assert sorted(q for call in predictor.calls[calls_before:] for q in call) == sorted(prompts)


def test_gateway_own_endpoints(gateway):
    with gateway(fairness_window_s=2.5) as url:
        complete(url, "hello")
        health = httpx.get(url + "/gateway/health").json()
        metrics = httpx.get(url + "/gateway/metrics").text
    assert health["status"] == "ok" and "reason" not in health
    assert health["max_overtake_ms"] == 2501.0 and health["scores_in_window"] == 1
    assert health["predictor_timeout_ms"] == health["predictor_timeout_base_ms"] == 5000  # a lone request's
    assert health["predictor_timeout_max_ms"] == 5000  # the default cap (500) is below this test's base
    assert health["recent"] == {"requests": 1, "fallbacks": 0}
    assert 'pars_gateway_requests_total{source="scored"} 1.0' in metrics
    assert "pars_gateway_predictor_timeout_seconds 5.0" in metrics


def test_upstream_down_is_a_502_from_the_gateway(predictor):
    settings = GatewaySettings(upstream_url=f"http://127.0.0.1:{free_port()}", predictor_url=predictor.url)
    with serve(create_app(settings)) as url:
        response = httpx.post(url + "/v1/completions", json={"prompt": "hi"})
        passed = httpx.get(url + "/v1/models")  # the pass-through path counts too
        metrics = httpx.get(url + "/gateway/metrics").text
    assert response.status_code == 502 and response.json()["error"]["type"] == "bad_gateway"
    assert passed.status_code == 502
    assert "pars_gateway_upstream_errors_total 2.0" in metrics


def test_idle_upstream_connections_are_dropped_before_the_upstream_closes_them():
    """A request sent on a pooled connection just as the upstream closes it fails ("Server disconnected
    without sending a response"); the gateway's pool drops idle connections before uvicorn's keep-alive
    timeout (vLLM's too) ends, and reuses them before that."""
    import uvicorn

    assert GatewaySettings().upstream_keepalive_expiry_s < uvicorn.Config(app=None).timeout_keep_alive
    ports: list[int] = []

    async def completions(request: Request) -> Response:
        ports.append(request.client.port)
        return JSONResponse({"choices": []})

    upstream_app = Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])
    with serve(upstream_app) as upstream_url:
        settings = GatewaySettings(upstream_url=upstream_url, scorer="none", upstream_keepalive_expiry_s=0.3)
        with serve(create_app(settings)) as url, httpx.Client(base_url=url) as client:
            for pause in (0.0, 0.0, 0.8):
                time.sleep(pause)
                assert client.post("/v1/completions", json={"prompt": "hi"}).status_code == 200
    assert ports[0] == ports[1] != ports[2]  # kept alive back to back; a new connection after the idle pause


def test_bad_setting_stops_startup_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "uvicorn", "scripts.pars_gateway:app", "--port", str(free_port())],
                          cwd=ROOT / "predictor_serving", env={**os.environ, "GATEWAY_CLIENT_PRIORITY": "ignore"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "PARS gateway cannot start" in ln]
    assert len(lines) == 1 and "GATEWAY_CLIENT_PRIORITY" in lines[0]


# ---------------------------------------------------------------- predictor failures and client priorities


@pytest.mark.parametrize(("failure", "reason"), [("down", "unreachable"), ("slow", "timeout"), ("error", "error")])
def test_predictor_failure_falls_back_to_neutral(gateway, upstream, predictor, failure, reason, caplog):
    overrides = {"predictor_timeout_ms": 100}
    if failure == "down":
        overrides["predictor_url"] = f"http://127.0.0.1:{free_port()}"
    predictor.mode = failure if failure != "down" else "ok"
    with caplog.at_level(logging.WARNING, logger="pars.gateway"), gateway(**overrides) as url:
        responses = [complete(url, f"prompt {i} the predictor will not score") for i in range(3)]
        health = httpx.get(url + "/gateway/health").json()
    for response in responses:
        assert response.headers["x-pars-priority-source"] == "fallback"
    assert responses[-1].json()["priority_seen"] == sent_priority(upstream)
    assert_neutral(sent_priority(upstream))
    assert health["fallbacks"] == 3 and health["fallbacks_by_reason"] == {reason: 3}
    # dated in the log once, not once per request: the next two fall within the same 10 s
    lines = [r.getMessage() for r in caplog.records if r.name == "pars.gateway" and "fallback" in r.getMessage()]
    assert len(lines) == 1 and f"({reason} after" in lines[0]


def test_client_priority_respected_by_default(gateway, upstream, predictor):
    raw = b'{"model": "tiny", "prompt": "hello there", "priority": -7}'
    with gateway() as url:
        before = len(predictor.calls)
        response = httpx.post(url + "/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert upstream.last()["body"] == raw and len(predictor.calls) == before
    assert response.headers["x-pars-priority"] == "-7" and response.headers["x-pars-priority-source"] == "client"


def test_client_priority_overridden(gateway, upstream):
    with gateway(client_priority="override") as url:
        response = complete(url, "hello there", priority=-7)
    assert response.headers["x-pars-priority-source"] == "scored"
    assert sent_priority(upstream) == int(response.headers["x-pars-priority"]) != -7


def test_client_priority_offset(gateway, upstream):
    with gateway(client_priority="offset", fairness_window_s=0) as url:
        plain = complete(url, "hello there")
        shifted = complete(url, "hello there", priority=-100_000)
    assert int(shifted.headers["x-pars-priority"]) == sent_priority(upstream)
    assert int(shifted.headers["x-pars-priority"]) < int(plain.headers["x-pars-priority"]) - 50_000


def test_in_process_ranker_orders_like_direct_scores(upstream, tiny_model_dir, checkpoint, direct):
    from pars.serving.settings import Settings

    predictor_settings = Settings(model_path=str(checkpoint), model_name=str(tiny_model_dir), device="cpu",
                                  warmup=False, num_threads=1)
    settings = GatewaySettings(upstream_url=upstream.url, scorer="local", predictor_timeout_ms=10_000,
                               fairness_window_s=BIG_WINDOW_S)
    words = "write a long detailed essay about the history of rome with many steps and code yes no".split()
    prompts = [" ".join(words[: n]) for n in range(1, len(words) + 1)]
    scores = dict(zip(prompts, direct.score(prompts), strict=True))
    longest, shortest = max(prompts, key=scores.__getitem__), min(prompts, key=scores.__getitem__)
    with serve(create_app(settings, predictor_settings)) as url:
        for p in prompts:  # calibration: the window then holds every prompt's score
            complete(url, p)
        long_reply, short_reply = complete(url, longest), complete(url, shortest)
    assert long_reply.headers["x-pars-priority-source"] == short_reply.headers["x-pars-priority-source"] == "scored"
    assert int(short_reply.headers["x-pars-priority"]) < int(long_reply.headers["x-pars-priority"])


class FakeScorer:
    async def score(self, text: str) -> float:
        return float(len(text))


def test_prioritizer_priorities_follow_scores():
    """All arrivals at t = 0: the priority is W * quantile, and its order is the score order."""
    settings = GatewaySettings(fairness_window_s=BIG_WINDOW_S, quantile_window=2000)
    prioritizer = Prioritizer(settings, FakeScorer(), GatewayMetrics(), PriorityClock(BIG_WINDOW_S, lambda: 0.0))
    for i in range(1000):  # calibration: 1,000 scores spread over [0, 130): about 38 between test scores
        prioritizer.window.add(i * 0.13)
    lengths = list(range(5, 125, 5))
    random.Random(0).shuffle(lengths)

    async def main():
        return {n: (await prioritizer.assign("/v1/completions", json.dumps({"prompt": "x" * n}).encode(), 0.0))
                for n in lengths}

    got = asyncio.run(main())
    assert all(a.source == "scored" for a in got.values())
    by_score = [got[n].priority for n in sorted(lengths)]
    assert by_score == sorted(by_score) and len(set(by_score)) == len(by_score)


class ConstScorer:
    async def score(self, text: str) -> float:
        return 1.0


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_prompt_length_weight_puts_long_prompts_later(weight):
    """Equal scores: without the weight every prompt gets the same priority; with it, longer prompts get
    larger ones, and the blended quantile stays in [0, 1] (priority <= W_ms: the guard's bound holds)."""
    settings = GatewaySettings(fairness_window_s=BIG_WINDOW_S, prompt_length_weight=weight)
    prioritizer = Prioritizer(settings, ConstScorer(), GatewayMetrics(), PriorityClock(BIG_WINDOW_S, lambda: 0.0))
    lengths = list(range(5, 125, 5))
    random.Random(0).shuffle(lengths)

    async def main():
        return {n: (await prioritizer.assign("/v1/completions", json.dumps({"prompt": "x" * n}).encode(), 0.0))
                for n in lengths}

    asyncio.run(main())  # calibration: both windows now hold every prompt
    got = asyncio.run(main())
    by_length = [got[n].priority for n in sorted(lengths)]
    if weight == 0:
        assert len(set(by_length)) == 1
    else:
        assert by_length == sorted(by_length) and len(set(by_length)) == len(by_length)
    assert all(0 <= p <= BIG_WINDOW_S * 1000 for p in by_length)
