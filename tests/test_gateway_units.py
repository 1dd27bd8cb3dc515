"""The gateway's parts without HTTP: the remote scorer's batching, the body and prompt readers, the
prioritizer, the starvation guard's bound, the wall clock, the score deadline and the health verdict."""

from __future__ import annotations

import asyncio
import json
import random

import httpx
import pytest

from pars.gateway.body import parse_object, with_members, with_priority
from pars.gateway.deadline import K, ScoreDeadline, size_class
from pars.gateway.health import RECENT, HealthTracker
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


def test_body_with_members_sets_several_and_keeps_the_rest():
    raw = b'{"stream": true, "stream_options" : {"x": 1},"n":1}'
    got = with_members(parse_object(raw), {"priority": "7", "stream_options": '{"x": 1, "include_usage": true}'})
    assert got == b'{"priority": 7, "stream": true, "stream_options" : {"x": 1, "include_usage": true},"n":1}'
    both = with_members(parse_object(b"{}"), {"priority": "1", "stream_options": "{}"})
    assert both == b'{"priority": 1, "stream_options": {}}'


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


@pytest.mark.parametrize("skew_ms", [0.0, 250.0])
def test_bound_across_gateways_grows_by_their_clock_skew(skew_ms):
    """Two gateways in front of one vLLM, one's clock `skew_ms` ahead: only requests arriving within
    W + 1 ms + skew after a request can overtake it."""
    window_s, rng = 1.0, random.Random(7)
    requests = [(rng.uniform(0, 20_000), rng.random(), rng.choice((0.0, skew_ms))) for _ in range(400)]
    clock = PriorityClock(window_s, clock=lambda: 0.0)
    order = sorted(range(len(requests)), key=lambda i: (clock.priority(requests[i][0] + requests[i][2],
                                                                      requests[i][1]), requests[i][0]))
    position = {i: k for k, i in enumerate(order)}
    worst = max((t_j - t_i for i, (t_i, _, _) in enumerate(requests) for j, (t_j, _, _) in enumerate(requests)
                 if t_j > t_i and position[j] < position[i]), default=0.0)
    assert worst < max_overtake_ms(window_s, skew_ms)


# ---------------------------------------------------------------- units: the wall clock


def test_clocks_started_at_different_times_agree():
    """Two gateways (one started 1 h after the other) give one request the same priority: the scale is the
    wall clock, not each process's start."""
    now = [1_700_000_000.0]
    early = PriorityClock(10, clock=lambda: now[0])
    now[0] += 3600.0
    late = PriorityClock(10, clock=lambda: now[0])
    now[0] += 12.345
    assert early.now_ms() == late.now_ms() == 1_700_003_612_345.0
    for q in (0.0, 0.37, 1.0):
        assert early.priority(early.now_ms(), q) == late.priority(late.now_ms(), q)
    assert early.priority(early.now_ms(), 0.5) == 1_700_003_612_345 + 5000


def test_default_clock_is_unix_epoch_milliseconds():
    import time

    before = time.time() * 1000
    got = PriorityClock(10).now_ms()
    assert before <= got <= time.time() * 1000


def test_clock_never_goes_back_when_the_wall_clock_does():
    now = [1000.0]
    clock = PriorityClock(10, clock=lambda: now[0])
    assert clock.now_ms() == 1_000_000.0
    now[0] = 998.0  # an NTP step back of 2 s
    assert clock.now_ms() == 1_000_000.0
    now[0] = 1000.5
    assert clock.now_ms() == 1_000_500.0


# ---------------------------------------------------------------- units: the score deadline


def test_size_classes_are_powers_of_two():
    assert [size_class(n) for n in (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33)] == [0, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6]


def test_allowance_lone_is_the_base_and_a_burst_follows_recent_waits_within_the_cap():
    d = ScoreDeadline(base_s=0.05, max_s=0.5)
    assert d.allowance_s(1) == 0.05 and d.now_s() == 0.05
    assert d.allowance_s(32) == 0.5  # nothing known: the cap
    d.observe(1, 0.4)  # a slow lone call teaches the bursts, never the lone request's own allowance
    assert d.allowance_s(1) == 0.05
    for wait in (0.05, 0.12, 0.08):
        d.observe(20, wait)
    assert d.allowance_s(20) == pytest.approx(K * 0.12)  # the slowest recent wait of its class, with margin
    assert d.allowance_s(3) == pytest.approx(min(0.5, K * 0.4 * 4))  # scaled up from the nearest smaller class
    d2 = ScoreDeadline(base_s=0.05, max_s=0.5)
    d2.observe(30, 0.02)
    assert d2.allowance_s(2) == 0.05  # from the nearest larger class as is, never below the base
    assert d2.allowance_s(64) == pytest.approx(K * 0.02 * 2)


def test_cap_at_or_below_the_base_is_the_fixed_timeout():
    d = ScoreDeadline(base_s=1.0, max_s=0.5)
    assert d.max_s == 1.0 and d.allowance_s(64) == 1.0


def test_lone_wait_times_out_at_the_base_and_is_remembered():
    d = ScoreDeadline(base_s=0.01, max_s=10.0)

    async def main():
        never = asyncio.get_running_loop().create_future()
        with pytest.raises(asyncio.TimeoutError):
            await d.wait(never)
        return never

    assert asyncio.run(main()).cancelled()
    assert d.last_s == 0.01 and d.expected_s(1) == 0.01 and d.waiting == 0


def test_burst_waits_past_the_base_for_its_scores():
    """Eight waits begin in one loop turn, their scores arrive after the base has passed: every one is
    scored, because a burst waits for the predictor's measured time (none yet: the cap)."""
    d = ScoreDeadline(base_s=0.01, max_s=30.0)

    async def main():
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(8)]
        waits = asyncio.gather(*(d.wait(f) for f in futures))
        await asyncio.sleep(0.05)
        assert d.waiting == 8
        for i, f in enumerate(futures):
            f.set_result(float(i))
        return await waits

    assert asyncio.run(main()) == [float(i) for i in range(8)]
    assert d.last_s == 30.0 and d.waiting == 0
    assert d.allowance_s(8) == pytest.approx(K * d.expected_s(8)) and d.expected_s(8) >= 0.05


def test_scorer_errors_pass_through_unremembered():
    d = ScoreDeadline(base_s=1.0, max_s=1.0)

    async def failing():
        raise httpx.ConnectError("refused")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(d.wait(failing()))
    assert d.expected_s(1) is None


# ---------------------------------------------------------------- units: the health verdict


def test_health_ok_until_the_predictor_is_unreachable_and_again_once_it_answers():
    h = HealthTracker()
    assert h.verdict() == ("ok", None)
    for _ in range(5):
        h.record(None)
    h.record("unreachable", httpx.ConnectError("All connection attempts failed"))
    status, reason = h.verdict()
    assert status == "degraded" and "unreachable" in reason and "ConnectError" in reason
    h.reachable_again()
    assert h.verdict() == ("ok", None) and h.recent() == {"requests": 5, "fallbacks": 0}


def test_health_degraded_while_most_recent_requests_fall_back():
    h = HealthTracker()
    for _ in range(3):
        h.record("timeout", asyncio.TimeoutError("no score within 50 ms"))
    status, reason = h.verdict()
    assert status == "degraded" and "3 of the last 3" in reason and "timeout: 3" in reason
    for _ in range(3):
        h.record(None)
    assert h.verdict() == ("ok", None)  # 3 of 6: not more than half
    for _ in range(RECENT):
        h.record("error", None)
    for _ in range(RECENT // 2):
        h.record(None)
    assert h.verdict() == ("ok", None)  # the window is the last RECENT requests
