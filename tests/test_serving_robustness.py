"""One odd prompt never fails its neighbours; an idle model never waits for company (the heap trim's thread:
tests/test_serving_memory.py)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from pars.serving.app import create_app
from pars.serving.batcher import build_runner
from pars.serving.engine import load_scorer
from pars.serving.observability import Metrics
from pars.serving.settings import Settings
from tests.serving_helpers import PROMPTS, serve


def settings_for(tiny_model_dir, checkpoint, **extra) -> Settings:
    return Settings(model_path=str(checkpoint), model_name=str(tiny_model_dir), device="cpu", num_threads=1,
                    **extra)


def test_a_huge_prompt_and_a_lone_surrogate_are_scored_beside_their_neighbours(tiny_model_dir, checkpoint, direct):
    huge = ("write a long essay about rome " * 6000)[:150_000]
    batch = [PROMPTS[0], huge, PROMPTS[1], "explain \ud800 why", PROMPTS[2]]
    app = create_app(settings_for(tiny_model_dir, checkpoint))
    with serve(app) as url:
        # json.dumps escapes the surrogate as \ud800, as a client's JSON encoder would
        response = httpx.post(url + "/score_batch", content=json.dumps({"prompts": batch}),
                              headers={"content-type": "application/json"}, timeout=60)
        metrics = httpx.get(url + "/metrics").text
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["prompts"] == [PROMPTS[0], huge, PROMPTS[1], "explain \ufffd why", PROMPTS[2]]
    alone = [direct.score([p])[0] for p in (PROMPTS[0], PROMPTS[1], PROMPTS[2])]
    assert [body["scores"][i] for i in (0, 2, 4)] == pytest.approx(alone, abs=1e-5)
    assert body["scores"][1] == pytest.approx(direct.score([huge[:100_000]])[0], abs=1e-5)
    assert body["scores"][3] == pytest.approx(direct.score(["explain \ufffd why"])[0], abs=1e-5)
    assert 'pars_prompts_changed_total{change="cut"} 1.0' in metrics
    assert 'pars_prompts_changed_total{change="surrogates"} 1.0' in metrics


async def _score_one_at_a_time(settings: Settings, n: int) -> dict[bool, int]:
    engine, runner = build_runner(load_scorer(settings), settings, Metrics(), batching=True)
    runner.start()
    ids = engine.encode(PROMPTS[:1])
    try:
        for _ in range(n):
            await asyncio.sleep(0.01)  # the batcher is back waiting for work: the model is idle
            await runner.score(ids)
        return dict(runner.rounds)
    finally:
        await runner.close()
        engine.close()


@pytest.mark.parametrize("max_wait_ms, waited", [(None, 0), (5.0, 4)])
def test_an_idle_model_takes_a_request_at_once(tiny_model_dir, checkpoint, max_wait_ms, waited):
    extra = {} if max_wait_ms is None else {"max_wait_ms": max_wait_ms}  # None: the default
    rounds = asyncio.run(_score_one_at_a_time(settings_for(tiny_model_dir, checkpoint, **extra), 4))
    assert rounds == {True: waited, False: 4 - waited}
