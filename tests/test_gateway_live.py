"""Live ranking quality (pars/gateway/live_quality.py) and the ranker's identity (x-pars-ranker-id): the pair
counts against pars.eval.rank_metrics and a direct count, censoring, and, through HTTP, the gauges and a
predictor whose ranker changes."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random

import httpx
import pytest
from serving_helpers import serve, serve_stand_in
from test_gateway_record import Predictor, VllmLike, outcome, wait_until

from pars.eval.rank_metrics import kendall_tau, length_cap, length_weighted_tau
from pars.gateway import live_quality
from pars.gateway.app import create_app
from pars.gateway.live_quality import LiveQuality, bucket_means, compute, rank_quality
from pars.gateway.observability import GatewayMetrics
from pars.gateway.policy import Prioritizer
from pars.gateway.priority import PriorityClock
from pars.gateway.scorers import RemoteScorer
from pars.gateway.settings import GatewaySettings
from pars.gateway.usage import Usage


def direct(scores, lengths, censored):
    """tau-b and the comparable-pair count, pair by pair, from the definition (module docstring)."""
    conc = disc = t_score = t_len = pairs = 0
    for i, j in itertools.combinations(range(len(scores)), 2):
        yi, yj = lengths[i], lengths[j]
        if censored[i] and censored[j]:
            continue
        if censored[i] and not yj < yi or censored[j] and not yi < yj:
            continue  # the censored one's true length may be anything from its observed one up
        pairs += 1
        ds, dy = (scores[j] > scores[i]) - (scores[j] < scores[i]), (yj > yi) - (yj < yi)
        conc += ds * dy > 0
        disc += ds * dy < 0
        t_score += ds == 0 and dy != 0
        t_len += dy == 0 and ds != 0
    denominator = math.sqrt((conc + disc + t_score) * (conc + disc + t_len))
    return (conc - disc) / denominator if denominator else math.nan, pairs


@pytest.mark.parametrize("block", [1 << 20, 7])
def test_uncensored_equals_rank_metrics(block, monkeypatch):
    monkeypatch.setattr(live_quality, "_BLOCK_CELLS", block)  # 7: many row blocks
    rng = random.Random(0)
    lengths = [rng.choice([5, 10, 10, 40, 200, 900, 2000]) + rng.randint(0, 3) for _ in range(300)]
    scores = [math.log(y) + rng.gauss(0, 1.0) for y in lengths]
    scores[:20] = [1.0] * 20  # ties in score too
    tau, weighted, pairs = rank_quality(scores, lengths, [False] * len(scores))
    assert tau == pytest.approx(kendall_tau(scores, lengths), abs=1e-12)
    assert weighted == pytest.approx(length_weighted_tau(scores, lengths, cap=length_cap(lengths)), abs=1e-12)
    assert pairs == 300 * 299 // 2


def test_censored_pairs_are_left_out_where_the_order_is_unknown():
    # 2 is cut at 30: shorter than 1's 50 or not, unknown (left out); longer than 0's 10, known (kept)
    tau, _, pairs = rank_quality([1.0, 2.0, 3.0], [10, 50, 30], [False, False, True])
    assert (tau, pairs) == (1.0, 2)
    assert rank_quality([1.0, 2.0], [30, 30], [True, True])[2] == 0  # both cut: never comparable
    rng = random.Random(1)
    for _ in range(20):
        n = rng.randint(2, 40)
        lengths = [rng.randint(1, 12) for _ in range(n)]
        censored = [rng.random() < 0.3 for _ in range(n)]
        scores = [y + rng.gauss(0, 3) if rng.random() < 0.8 else 0.0 for y in lengths]
        tau, _, pairs = rank_quality(scores, lengths, censored)
        want, want_pairs = direct(scores, lengths, censored)
        assert pairs == want_pairs and (tau == pytest.approx(want, abs=1e-12) or math.isnan(tau) and math.isnan(want))


def test_censored_weights_are_the_observed_differences():
    # pairs kept: (0, 1) weight 40, (0, 2) weight 20 (2 cut at 30: at least 20 longer than 0); (1, 2) left out
    _, weighted, _ = rank_quality([1.0, 3.0, 2.0], [10, 50, 30], [False, False, True])
    cap = length_cap([10, 50, 30])
    w01, w02 = min(50, cap) - 10, min(30, cap) - 10
    assert weighted == pytest.approx((w01 + w02) / (w01 + w02))
    _, weighted, _ = rank_quality([3.0, 1.0, 2.0], [10, 50, 30], [False, False, True])
    assert weighted == pytest.approx(-1.0)


def test_bucket_means_follow_the_score_order():
    assert bucket_means([4, 3, 2, 1, 8, 7, 6, 5], [40, 30, 20, 10, 80, 70, 60, 50]) == [15, 35, 55, 75]
    assert compute([]).requests == 0 and math.isnan(compute([(1.0, 5, False)]).kendall_tau)


def test_the_window_keeps_scored_finished_answers_of_the_current_ranker(monkeypatch):
    live = LiveQuality(3)
    live.reset("r")
    for o in (outcome(1), outcome(2, priority_source="fallback", score=None), outcome(3, complete=False),
              outcome(4, status=500), outcome(5, usage=Usage()), outcome(6, ranker_id="old"),
              outcome(7, choices=2)):  # n=2: its usage sums two answers, no one answer's length
        live.add(o)
    assert len(live) == 1
    for i in range(8, 13):
        live.add(outcome(i))
    assert len(live) == 3  # the last 3
    calls = []
    monkeypatch.setattr(live_quality, "compute", lambda entries: calls.append(entries) or compute(entries))
    first = asyncio.run(live.refresh())
    assert asyncio.run(live.refresh()) is first and len(calls) == 1  # unchanged: not recomputed
    assert first.requests == 3 and first.kendall_tau == 1.0
    live.reset("new")
    assert asyncio.run(live.refresh()).requests == 0 and len(calls) == 2


# ---------------------------------------------------------------- the ranker's identity


def test_remote_scorer_reads_the_ranker_id_and_an_older_answer_never_brings_back_the_old_one():
    order, gates = [], {}

    async def handler(request: httpx.Request) -> httpx.Response:
        prompts = json.loads(request.content)["prompts"]
        order.append(prompts[0])
        await gates[prompts[0]].wait()
        ranker = "old" if prompts[0] == "first" else "new"
        return httpx.Response(200, json={"scores": [1.0]}, headers={"x-pars-ranker-id": ranker})

    async def main():
        gates.update(first=asyncio.Event(), second=asyncio.Event())
        scorer = RemoteScorer("http://predictor", timeout_s=5, gather_s=0, max_batch=1,
                              transport=httpx.MockTransport(handler))
        first = asyncio.ensure_future(scorer.score_tagged("first"))
        second = asyncio.ensure_future(scorer.score_tagged("second"))
        while len(order) < 2:
            await asyncio.sleep(0)
        gates["second"].set()
        assert await second == (1.0, "new") and scorer.ranker_id == "new"
        gates["first"].set()
        assert await first == (1.0, "old") and scorer.ranker_id == "new"  # the older call's answer came later
        await scorer.close()

    asyncio.run(main())


class SwitchingScorer:
    """Scores by length; `ranker_id` is what the next score_tagged answers are tagged with, unless `stale`."""

    def __init__(self) -> None:
        self.ranker_id = "a"
        self.stale: str | None = None

    async def score_tagged(self, text: str) -> tuple[float, str | None]:
        return float(len(text)), self.stale or self.ranker_id


def test_prioritizer_starts_fresh_windows_for_a_new_ranker_and_drops_a_replaced_one():
    settings = GatewaySettings(fairness_window_s=1000, prompt_length_weight=1.0)
    metrics = GatewayMetrics()
    scorer = SwitchingScorer()
    prioritizer = Prioritizer(settings, scorer, metrics, PriorityClock(1000, lambda: 0.0))
    heard = []
    prioritizer.on_ranker_change(heard.append)

    def assign(prompt: str):
        return asyncio.run(prioritizer.assign("/v1/completions", json.dumps({"prompt": prompt}).encode(), 0.0))

    for n in range(1, 6):
        assert assign("x" * n).ranker_id == "a"
    assert len(prioritizer.window) == len(prioritizer.lengths) == 5
    scorer.ranker_id = "b"
    a = assign("x" * 3)
    assert (a.source, a.ranker_id, a.quantile) == ("scored", "b", 0.5)  # alone in its window: neutral
    assert len(prioritizer.window) == len(prioritizer.lengths) == 1
    assert heard == ["a", "b"] and prioritizer.ranker_id == "b" and metrics.ranker_change_count() == 1
    scorer.stale = "a"  # an answer computed by the ranker just replaced
    late = assign("x" * 9)
    assert late.source == "fallback" and metrics.fallbacks_by_reason() == {"ranker_changed": 1}
    assert len(prioritizer.window) == 1


# ---------------------------------------------------------------- through HTTP


@pytest.fixture(scope="module")
def upstream():
    with serve_stand_in(VllmLike()) as stand_in:
        yield stand_in


def test_live_gauges_through_http_and_a_ranker_change_resets_them(upstream):
    rng = random.Random(2)
    prompts = [f"prompt {i} " + "w" * rng.randint(0, 60) for i in range(24)]
    upstream.lengths.update({p: max(1, len(p) + rng.randint(-20, 20)) for p in prompts})
    predictor = Predictor()
    with serve(predictor.app) as predictor_url:
        settings = GatewaySettings(upstream_url=upstream.url, predictor_url=predictor_url, gather_ms=0,
                                   predictor_timeout_ms=5000, live_window=20)
        with serve(create_app(settings)) as url:
            for i, p in enumerate(prompts):  # the last 4 cut at max_tokens 30
                body = {"prompt": p, "max_tokens": 30 if i >= 20 else 1000, "stream": i % 2 == 1,
                        **({"stream_options": {"include_usage": True}} if i % 2 else {})}
                assert httpx.post(url + "/v1/completions", json=body).status_code == 200
            wait_until(lambda: httpx.get(url + "/gateway/health").json()["live"]["requests"] == 20, "20 in window")
            health = httpx.get(url + "/gateway/health").json()
            metrics = httpx.get(url + "/gateway/metrics").text
            predictor.ranker_id = "ranker-b"
            assert httpx.post(url + "/v1/completions", json={"prompt": "after"}).status_code == 200
            wait_until(lambda: httpx.get(url + "/gateway/health").json()["live"]["requests"] == 1, "a fresh window")
            after = httpx.get(url + "/gateway/health").json()
            metrics_after = httpx.get(url + "/gateway/metrics").text
    last = prompts[-20:]
    lengths = [min(upstream.lengths[p], 30) if i >= 16 else upstream.lengths[p] for i, p in enumerate(last)]
    censored = [i >= 16 and upstream.lengths[p] >= 30 for i, p in enumerate(last)]
    tau, weighted, pairs = rank_quality([float(len(p)) for p in last], lengths, censored)
    assert health["live"]["kendall_tau"] == pytest.approx(tau, abs=1e-6)
    assert health["live"]["length_weighted_tau"] == pytest.approx(weighted, abs=1e-6)
    assert health["live"]["comparable_pairs"] == pairs and health["live"]["censored"] == sum(censored)
    assert health["ranker_id"] == "ranker-a" and health["scores_in_window"] == 24
    gauge = next(ln for ln in metrics.splitlines() if ln.startswith("pars_gateway_live_kendall_tau "))
    assert float(gauge.split()[1]) == pytest.approx(tau, abs=1e-6)
    assert metrics.count("pars_gateway_live_completion_tokens_mean{") == 4
    assert after["ranker_id"] == "ranker-b" and after["ranker_changes"] == 1 and after["scores_in_window"] == 1
    assert "pars_gateway_ranker_changes_total 1.0" in metrics_after
    assert "pars_gateway_live_requests 1.0" in metrics_after
