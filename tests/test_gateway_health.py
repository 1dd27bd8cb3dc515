"""The gateway's health verdict and its burst-aware score deadline, through HTTP, with stand-ins on loopback.

Nothing asserts a duration: the stand-in predictor answers when the prompts it waits for have all arrived,
and the timeouts are set far from the waits they must (or must not) cover.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from serving_helpers import free_port, serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pars.gateway.app import create_app
from pars.gateway.settings import GatewaySettings


async def completions(request: Request) -> Response:
    await request.body()
    return JSONResponse({"object": "text_completion"})


class HoldingPredictor:
    """/score_batch that holds every call until `until` prompts have arrived in all (then `delay_s` more):
    a burst's calls are answered together, after the gateway's base timeout has passed."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.until = 1
        self.delay_s = 0.0
        self.app = Starlette(routes=[Route("/score_batch", self.score_batch, methods=["POST"])])

    async def score_batch(self, request: Request) -> Response:
        prompts = (await request.json())["prompts"]
        self.prompts += prompts
        while len(self.prompts) < self.until:
            await asyncio.sleep(0.005)
        await asyncio.sleep(self.delay_s)
        return JSONResponse({"prompts": prompts, "scores": [float(len(p)) for p in prompts]})


@pytest.fixture(scope="module")
def upstream_url():
    with serve(Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])) as url:
        yield url


@contextmanager
def serve_on(app, port: int):
    """`app` under uvicorn on this port (serving_helpers.serve picks its own)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def post(url: str, prompt: str) -> httpx.Response:
    response = httpx.post(url + "/v1/completions", json={"prompt": prompt}, timeout=30)
    assert response.status_code == 200
    return response


def test_health_degraded_while_the_predictor_is_unreachable_then_ok_once_it_answers(upstream_url):
    port = free_port()  # nothing listens here yet
    settings = GatewaySettings(upstream_url=upstream_url, predictor_url=f"http://127.0.0.1:{port}")
    with serve(create_app(settings)) as url:
        first = httpx.get(url + "/gateway/health")
        assert first.status_code == 200 and first.json()["status"] == "ok"  # no request has asked yet
        assert post(url, "hello").headers["x-pars-priority-source"] == "fallback"
        down = httpx.get(url + "/gateway/health")
        assert down.status_code == 200  # still proxying: a load balancer must keep it
        assert down.json()["status"] == "degraded" and "predictor unreachable" in down.json()["reason"]
        assert httpx.get(url + "/gateway/health").json()["status"] == "degraded"  # the probe finds it down
        with serve_on(HoldingPredictor().app, port):
            back = httpx.get(url + "/gateway/health").json()  # the probe reaches it: no traffic needed
            assert back["status"] == "ok" and "reason" not in back
            assert post(url, "hello again").headers["x-pars-priority-source"] == "scored"


def test_health_ok_with_a_working_predictor(upstream_url):
    predictor = HoldingPredictor()
    with serve(predictor.app) as predictor_url:
        settings = GatewaySettings(upstream_url=upstream_url, predictor_url=predictor_url)
        with serve(create_app(settings)) as url:
            assert post(url, "hello").headers["x-pars-priority-source"] == "scored"
            health = httpx.get(url + "/gateway/health").json()
    assert health["status"] == "ok" and health["recent"] == {"requests": 1, "fallbacks": 0}


def test_a_burst_waits_for_its_scores_where_a_lone_request_falls_back(upstream_url):
    """The stand-in answers 0.5 s after the last prompt it waits for. Alone, a request waits the base
    timeout (0.3 s) and falls back; in a burst of 8 (arriving well within 0.3 s of each other), each may
    wait up to the cap (30 s), and all are scored. Most falling back turns the health degraded, the
    burst's scores turn it ok again."""
    predictor = HoldingPredictor()
    predictor.delay_s = 0.5
    with serve(predictor.app) as predictor_url:
        settings = GatewaySettings(upstream_url=upstream_url, predictor_url=predictor_url, predictor_timeout_ms=300,
                                   predictor_timeout_max_ms=30_000, gather_ms=0)
        with serve(create_app(settings)) as url:
            lone = post(url, "a lone prompt")
            assert lone.headers["x-pars-priority-source"] == "fallback"
            after_lone = httpx.get(url + "/gateway/health").json()
            predictor.until = 1 + 8

            async def burst():
                async with httpx.AsyncClient(timeout=60) as client:
                    return await asyncio.gather(*(client.post(url + "/v1/completions", json={"prompt": "p" * i})
                                                  for i in range(1, 9)))

            replies = asyncio.run(burst())
            health = httpx.get(url + "/gateway/health").json()
            metrics = httpx.get(url + "/gateway/metrics").text
    assert after_lone["status"] == "degraded" and "timeout: 1" in after_lone["reason"]
    assert after_lone["predictor_timeout_ms"] == 300
    assert [r.headers["x-pars-priority-source"] for r in replies] == ["scored"] * 8
    assert health["status"] == "ok" and health["recent"] == {"requests": 9, "fallbacks": 1}
    assert 300 < health["predictor_timeout_ms"] <= 30_000  # the latest request's allowance: a burst's
    assert health["predictor_timeout_now_ms"] == 300  # a request arriving now, alone: the base
    gauge = next(ln for ln in metrics.splitlines() if ln.startswith("pars_gateway_predictor_timeout_seconds "))
    assert float(gauge.split()[1]) == pytest.approx(health["predictor_timeout_ms"] / 1000, abs=1e-3)
