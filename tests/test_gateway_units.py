"""The gateway's parts without HTTP: the remote scorer's batching, the body and prompt readers, the
prioritizer, and the starvation guard's bound."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import pytest

from pars.gateway.body import parse_object, with_priority
from pars.gateway.observability import GatewayMetrics
from pars.gateway.policy import Prioritizer
from pars.gateway.priority import PriorityClock, QuantileWindow, max_overtake_ms
from pars.gateway.prompts import chat_text, completion_text
from pars.gateway.scorers import RemoteScorer
from pars.gateway.settings import GatewaySettings

BIG_WINDOW_S = 1000.0  # W = 1e6 ms: arrival-time differences inside a test are negligible beside it


# ---------------------------------------------------------------- units: batching, body, prompts


def test_remote_scorer_batches_concurrent_arrivals():
    calls = []

    async def handler(request: httpx.Request) -> httpx.Response:
        prompts = json.loads(request.content)["prompts"]
        calls.append(prompts)
        return httpx.Response(200, json={"prompts": prompts, "scores": [len(p) for p in prompts]})

    async def main():
        scorer = RemoteScorer("http://predictor", timeout_s=5, gather_s=0.5, max_batch=64,
                              transport=httpx.MockTransport(handler))
        try:
            return await asyncio.gather(*(scorer.score("p" * n) for n in range(1, 6)))
        finally:
            await scorer.close()

    assert asyncio.run(main()) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert calls == [["p", "pp", "ppp", "pppp", "ppppp"]]


def test_remote_scorer_sends_at_once_when_idle_and_gathers_while_busy():
    calls, release = [], None

    async def handler(request: httpx.Request) -> httpx.Response:
        prompts = json.loads(request.content)["prompts"]
        calls.append(prompts)
        if len(calls) == 1:
            await release.wait()  # the first call stays in flight while the others arrive
        return httpx.Response(200, json={"prompts": prompts, "scores": [0.0] * len(prompts)})

    async def main():
        nonlocal release
        release = asyncio.Event()
        # gather_s = 60: only the batch-size limit can send the second group before the test times out
        scorer = RemoteScorer("http://predictor", timeout_s=5, gather_s=60, max_batch=3,
                              transport=httpx.MockTransport(handler))
        first = asyncio.ensure_future(scorer.score("a"))
        while not calls:
            await asyncio.sleep(0)
        rest = []
        for p in "bcd":
            rest.append(asyncio.ensure_future(scorer.score(p)))
            await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*rest), 30)
        release.set()
        await first
        await scorer.close()

    asyncio.run(main())
    assert calls == [["a"], ["b", "c", "d"]]


def test_remote_scorer_splits_at_max_batch():
    calls = []

    async def handler(request: httpx.Request) -> httpx.Response:
        prompts = json.loads(request.content)["prompts"]
        calls.append(len(prompts))
        return httpx.Response(200, json={"prompts": prompts, "scores": [0.0] * len(prompts)})

    async def main():
        scorer = RemoteScorer("http://predictor", timeout_s=5, gather_s=10, max_batch=3,
                              transport=httpx.MockTransport(handler))
        try:
            await asyncio.gather(*(scorer.score("p") for _ in range(6)))
        finally:
            await scorer.close()

    asyncio.run(main())
    assert calls == [3, 3]  # full groups go at once, without waiting out the 10 s gathering window


def test_body_with_priority_replaces_every_top_level_priority_only():
    raw = b'{"priority": 5, "x": {"priority": 1}, "priority" :\t9 }'
    assert with_priority(parse_object(raw), -3) == b'{"priority": -3, "x": {"priority": 1}, "priority" :\t-3 }'
    assert with_priority(parse_object(b" {} "), 4) == b' {"priority": 4} '


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b'{"a": 1', b'{"a": 1} x', b'{"a" 1}', b"{,}", b"\xff{}", b""])
def test_body_that_is_not_one_json_object_is_left_alone(raw):
    assert parse_object(raw) is None


def test_parse_object_reads_values_as_json_loads():
    raw = b'{"a": 1.50, "b": [true, null], "a": "last wins", "c": {"d": "\\u00e9"}}'
    assert parse_object(raw).value == json.loads(raw)


def test_prompt_extraction():
    assert completion_text({"prompt": "hi"}) == "hi"
    assert completion_text({"prompt": ["first", "second"]}) == "first"
    assert completion_text({"prompt": [1, 2, 3]}) is None and completion_text({"prompt": []}) is None
    assert completion_text({}) is None
    assert chat_text({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) == "a"
    assert chat_text({"messages": [{"role": "system", "content": "s"}]}) is None
    assert chat_text({"messages": "nope"}) is None


def test_prioritizer_unscored_mode_is_fcfs():
    now = [0.0]
    settings = GatewaySettings(scorer="none", fairness_window_s=10)
    prioritizer = Prioritizer(settings, None, GatewayMetrics(), PriorityClock(10, clock=lambda: now[0]))

    async def main():
        return [(await prioritizer.assign("/v1/completions", b'{"prompt": "x"}', t)).priority for t in (0, 3, 7)]

    assert asyncio.run(main()) == [5000, 5003, 5007]



def test_max_tokens_scorer_orders_by_each_requests_own_cap():
    """GATEWAY_SCORER=max_tokens (the experiments' oracle): priorities follow max_tokens (chat's
    max_completion_tokens first); a request without a cap goes neutral, counted as unscorable."""
    settings = GatewaySettings(scorer="max_tokens", fairness_window_s=BIG_WINDOW_S)
    prioritizer = Prioritizer(settings, None, GatewayMetrics(), PriorityClock(BIG_WINDOW_S, lambda: 0.0))
    for i in range(100):
        prioritizer.window.add(float(i * 10))
    requests = [("/v1/completions", {"prompt": "a", "max_tokens": 700}),
                ("/v1/chat/completions", {"messages": [{"role": "user", "content": "b"}], "max_tokens": 900,
                                          "max_completion_tokens": 30}),
                ("/v1/completions", {"prompt": "a long prompt that a ranker would put late", "max_tokens": 250})]

    async def main():
        got = [await prioritizer.assign(path, json.dumps(body).encode(), 0.0) for path, body in requests]
        return got, await prioritizer.assign("/v1/completions", b'{"prompt": "no cap"}', 0.0)

    (cap700, cap30, cap250), uncapped = asyncio.run(main())
    assert {a.source for a in (cap700, cap30, cap250)} == {"scored"}
    assert cap30.priority < cap250.priority < cap700.priority
    assert uncapped.source == "unscorable"
    assert uncapped.priority == round(BIG_WINDOW_S * 1000 / 2)  # arrival 0, quantile 0.5


# ---------------------------------------------------------------- units: the starvation guard


def test_quantile_is_scale_free_and_neutral_when_empty():
    a, b = QuantileWindow(100), QuantileWindow(100)
    assert a.quantile(3.0) == 0.5
    scores = [random.Random(1).gauss(0, 1) for _ in range(50)]
    qa = [a.observe(s) for s in scores]
    qb = [b.observe(1000 * s - 7) for s in scores]
    assert qa == qb
    assert a.quantile(max(scores) + 1) == 1.0 and a.quantile(min(scores) - 1) == 0.0


def test_quantile_window_slides():
    w = QuantileWindow(3)
    for s in (1.0, 2.0, 3.0, 10.0, 11.0, 12.0):
        w.add(s)
    assert len(w) == 3 and w.quantile(5.0) == 0.0  # 1, 2, 3 have left the window


def served_order(requests: list[tuple[float, float]], window_s: float) -> list[int]:
    """Indices in vLLM's order (lowest priority, then earliest arrival), all requests waiting together."""
    clock = PriorityClock(window_s, clock=lambda: 0.0)
    keyed = [(clock.priority(t, q), t, i) for i, (t, q) in enumerate(requests)]
    return [i for _, _, i in sorted(keyed)]


@pytest.mark.parametrize("window_s", [0.0, 0.05, 1.0, 30.0])
def test_no_request_is_overtaken_by_one_arriving_more_than_the_window_later(window_s):
    rng = random.Random(int(window_s * 100))
    requests = [(rng.uniform(0, 60_000), rng.random()) for _ in range(400)]
    order = served_order(requests, window_s)
    position = {i: k for k, i in enumerate(order)}
    bound = max_overtake_ms(window_s)
    overtakes = 0
    for i, (t_i, _) in enumerate(requests):
        for j, (t_j, _) in enumerate(requests):
            if t_j > t_i and position[j] < position[i]:
                overtakes += 1
                assert t_j - t_i < bound
    if window_s >= 1.0:
        assert overtakes > 0  # the guard still lets short jobs go first inside the window


def test_window_zero_is_fcfs_and_large_window_is_shortest_first():
    requests = [(float(t), q) for t, q in zip(range(0, 100, 10), (0.9, 0.1, 0.5, 0.3, 0.7, 0.0, 1.0, 0.2, 0.8, 0.4),
                                              strict=True)]
    assert served_order(requests, 0.0) == list(range(10))
    by_q = sorted(range(10), key=lambda i: requests[i][1])
    assert served_order(requests, 1e6) == by_q
    # W = 20 ms, arrivals 10 ms apart: only neighbours within 20 ms trade places
    assert served_order(requests, 0.02) == [1, 0, 2, 3, 5, 4, 7, 6, 8, 9]
