"""experiments/loop_bench without vLLM or servers: the later-turn traffic (turn 2 and on only, the record, after
and latency sets disjoint, lengths in the served tokenizer: here the tiny BERT's), the taus with intervals over
records, the records the loop is fed, the loop's command and outcome, the pooling and the report of before and
after (made-up per-seed results), the servers' settings, and the flags' checks."""

from __future__ import annotations

import argparse
import json
import math
import random

import numpy as np
import pytest
from scipy import stats

from experiments.lib.traces import build_trace
from experiments.loop_bench import cli, data, latency, loop, records, report, servers, traffic
from experiments.vllm_bench import METRICS
from pars.eval.rank_metrics import kendall_tau, length_cap, length_weighted_tau

WORDS = "write explain list summarize essay story poem code python function history rome math proof".split()


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def conv(item_id: str, *pairs: tuple[str, str], first: str = "human") -> dict:
    turns = [{"from": "gpt", "value": "hello"}] if first == "gpt" else []
    for h, g in pairs:
        turns += [{"from": "human", "value": h}, {"from": "gpt", "value": g}]
    return {"id": item_id, "conversations": turns}


# ---- the traffic ---------------------------------------------------------------------------------------------


def test_later_turns_are_turn_two_and_on_of_the_whole_conversation():
    items = [
        conv("a_0", ("a first", "ans a1"), ("a second", "ans a2")),
        conv("b", ("b first", "ans b1")),
        conv("a_1", ("a third", "ans a3"), ("a fourth", "")),  # a part: its first message is turn 3 of "a"
        conv("c", ("c first", "x"), ("a second", "repeated text"), ("seen text", "y"), ("c fourth", "z")),
        conv("d", ("d first", "x"), ("d second", "y"), first="gpt"),  # a greeting first: turns still count pairs
        conv("", ("no id first", "x"), ("no id second", "y")),
    ]
    rows, counts = data.later_turns(items, 2, seen={"seen text"})
    assert [(r["conversation"], r["turn"], r["prompt"]) for r in rows] == [
        ("a", 2, "a second"), ("a", 3, "a third"), ("c", 4, "c fourth"), ("d", 2, "d second"),
        ("#5", 2, "no id second")]
    assert all(r["turn"] >= 2 for r in rows) and len({r["prompt"] for r in rows}) == len(rows)
    assert rows[0]["task_id"] == "a#t2" and rows[0]["answer_content"] == "ans a2"
    assert counts == {"conversations": 5, "turns": 13, "earlier_turns": 5, "empty_prompt_or_answer": 1,
                      "repeated_prompt_text": 1, "in_the_rankers_data": 1, "later_turn_rows": 5}
    rows3, _ = data.later_turns(items, 3)
    assert {r["prompt"] for r in rows3} == {"a third", "c fourth"} | {"seen text"}
    assert data.part_index("x_12") == 12 and data.part_index("x") == 0 and data.part_index("_3") == 0


def test_seen_prompts_read_from_data_files(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps([{"prompt": "p1", "answer_content": "a"}, {"prompt": "p2"}, {}]))
    (tmp_path / "v.json").write_text(json.dumps([{"prompt": "p3"}]))
    assert data.seen_prompts([tmp_path / "t.json", tmp_path / "v.json"]) == {"p1", "p2", "p3"}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def later_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    items = [conv(f"c{i}", (f"first {i}", "a"), (f"{words(rng, rng.randint(1, 6))} number {i}",
                                                  words(rng, rng.randint(1, 60)))) for i in range(n)]
    return data.later_turns(items)[0]


def test_sets_are_disjoint_and_their_lengths_are_the_served_tokenizers(tokenizer):
    rows = later_rows(120)
    sets, pool, skipped = data.draw_sets(rows, tokenizer, {"record": 40, "after": 20}, seed=3, cap=50,
                                         max_model_len=10_000)
    assert [len(sets["record"]), len(sets["after"])] == [40, 20] and skipped == {}
    rec, aft, rest = ({r.prompt for r in sets["record"]}, {r.prompt for r in sets["after"]},
                      {r["prompt"] for r in pool})
    assert not rec & aft and not rest & (rec | aft) and len(rest) == 60
    by_prompt = {r["prompt"]: r for r in rows}
    for r in sets["record"] + sets["after"]:
        true = len(tokenizer(by_prompt[r.prompt]["answer_content"], add_special_tokens=False)["input_ids"])
        assert r.answer_tokens == true and r.max_tokens == min(50, true)  # the served model's tokens, capped
        assert r.answer_tokens == len(by_prompt[r.prompt]["answer_content"].split())  # one token a known word
        assert r.prompt_tokens == len(tokenizer(r.prompt)["input_ids"])
    assert any(r.answer_tokens > r.max_tokens for r in sets["record"])  # some capped
    again, _, _ = data.draw_sets(rows, tokenizer, {"record": 40, "after": 20}, seed=3, cap=50, max_model_len=10_000)
    assert [r.id for r in again["record"]] == [r.id for r in sets["record"]]  # the seed decides
    # a latency trace is drawn from the rest only, as vllm_bench draws its
    trace, _ = data.latency_trace(pool, tokenizer, 10, 0, 50, 10_000)
    assert {r.prompt for r in trace} <= rest
    assert [r.id for r in trace] == [r.id for r in build_trace(pool, tokenizer, 10, 0, 50, 10_000)[0]]


def test_chat_requests_leave_room_for_the_template(tokenizer):
    rows = later_rows(30)
    budget = 40
    sets, pool, skipped = data.draw_sets(rows, tokenizer, {"record": 5, "after": 1}, 0, 1000,
                                         budget + data.CHAT_OVERHEAD_TOKENS)
    assert all(r.prompt_tokens + r.max_tokens <= budget for r in sets["record"] + sets["after"])
    assert skipped.get("too_long_for_context", 0) > 0
    with pytest.raises(SystemExit, match="only"):
        data.draw_sets(rows, tokenizer, {"record": 29, "after": 5}, 0, 1000, 100)


# ---- records and taus ----------------------------------------------------------------------------------------


def record(prompt, score, tokens, t=100.0, status=200, ranker="r1", censored=True, max_tokens=None):
    return {"time": t, "path": "/v1/chat/completions", "prompt": prompt, "score": score, "completion_tokens": tokens,
            "finish_reason": "length" if censored else "stop", "censored": censored, "status": status,
            "ranker_id": ranker, "priority_source": "scored" if score is not None else "fallback",
            "max_tokens": max_tokens if max_tokens is not None else tokens}


def test_records_read_and_selected(tmp_path):
    rs = [record("a", 1.0, 5), record("b", 2.0, 9, t=50.0), record("c", 3.0, 7, status=500),
          record("d", None, 4), record("e", 0.5, 3, ranker="r2")]
    (tmp_path / "requests-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs[:3]))
    (tmp_path / "requests-2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs[3:]) + '{"time": 1')
    (tmp_path / "other.txt").write_text("not records")
    got = records.read_records(tmp_path)
    assert [r["prompt"] for r in got] == ["a", "b", "c", "d", "e"]  # the line being written is left out
    assert [r["prompt"] for r in records.select(got, since=60)] == ["a", "d", "e"]  # status 200 only
    assert [r["prompt"] for r in records.select(got, {"a", "b", "e"}, ranker_id="r1")] == ["a", "b"]
    assert [r["prompt"] for r in records.select(got, until=60)] == ["b"]
    assert records.scored_pairs(records.select(got)) == ([1.0, 2.0, 0.5], [5.0, 9.0, 3.0])  # no score: out
    s = records.summary(got)
    assert s["records"] == 5 and s["by_ranker_id"] == {"r1": 4, "r2": 1} and s["with_score"] == 4
    assert records.wait_for(tmp_path, lambda r: records.select(r, {"a"}), 1, timeout_s=0) == [got[0]]
    assert records.wait_for(tmp_path / "none", lambda r: r, 1, timeout_s=0) == []


def test_taus_with_bootstrap_intervals_over_requests():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 800, 120).astype(float)
    scores = lengths + rng.normal(0, 250, 120)
    t = records.taus(list(scores), list(lengths), n_resamples=300, seed=1)
    assert t["n"] == 120 and t["kendall_tau"] == pytest.approx(kendall_tau(scores, lengths))
    cap = length_cap(lengths)
    assert t["length_cap"] == cap
    assert t["length_weighted_tau"] == pytest.approx(length_weighted_tau(scores, lengths, cap))
    direct = stats.bootstrap((list(scores), list(lengths)), kendall_tau, paired=True, vectorized=False,
                             n_resamples=300, method="percentile", rng=np.random.default_rng(1)).confidence_interval
    assert t["kendall_tau_ci95"] == pytest.approx([direct.low, direct.high])
    for key in ("kendall_tau", "length_weighted_tau"):
        lo, hi = t[key + "_ci95"]
        assert lo < t[key] < hi and 0 < lo and hi < 1
    # many lengths tied (capped at one length): some resamples have no tau; the interval is over the others
    tied = [5.0, 9.0, 3.0] + [128.0] * 17
    t = records.taus(list(np.arange(20.0)), tied, n_resamples=200, seed=0)
    assert t["kendall_tau_ci95"] is not None and t["kendall_tau_ci95"][0] <= t["kendall_tau_ci95"][1]
    few = records.taus([1.0, 2.0], [3.0, 4.0])
    assert few["kendall_tau"] == pytest.approx(1.0) and few["kendall_tau_ci95"] is None
    assert records.taus([], [])["n"] == 0


def test_tau_difference_after_minus_before():
    rng = np.random.default_rng(2)
    y0, y1 = rng.integers(1, 500, 150).astype(float), rng.integers(1, 500, 100).astype(float)
    worse, better = y0 + rng.normal(0, 400, 150), y1 + rng.normal(0, 40, 100)
    d = records.tau_difference((worse, y0), (better, y1), n_resamples=200, seed=0)
    k = d["kendall_tau"]
    assert k["difference"] == pytest.approx(kendall_tau(better, y1) - kendall_tau(worse, y0))
    assert 0 < k["ci95"][0] < k["difference"] < k["ci95"][1]
    assert d["length_weighted_tau"]["difference"] > 0
    assert records.tau_difference(([1.0], [1.0]), (better, y1))["kendall_tau"]["ci95"] is None


def test_paired_trace_taus_on_the_common_prompts():
    lengths = {f"p{i}": i for i in range(30)}
    old = {f"p{i}": float((i * 7) % 30) for i in range(30)}
    new = {f"p{i}": float(i) for i in range(29)}  # p29 missing: left out
    t = records.paired_trace_taus(old, new, lengths)
    assert t["prompts"] == 29 and t["pars-new"] == pytest.approx(1.0)
    assert t["difference"]["difference"] == pytest.approx(1.0 - t["pars-old"])
    assert records.paired_trace_taus({}, new, lengths) is None
    assert records.scores_by_prompt([record("a", 1.0, 3), record("a", 2.0, 1), record("b", None, 2)]) == {"a": 2.0}


def test_the_loop_gets_the_records_that_ended_at_their_true_length_as_uncensored(tmp_path):
    from pars.data import traces

    rs = [record(f"prompt {i}", float(i), 10 + i, t=1000.0 + i) for i in range(12)]
    rs.append(record("cut short", 1.0, 3))  # asked for 50, got 3: really censored
    asked = {f"prompt {i}": 10 + i for i in range(12)} | {"cut short": 50}
    fed = records.for_the_loop(rs, asked, tmp_path / "true")
    assert fed == {"records": 13, "uncensored_at_true_length": 12, "censored_left": 1}
    out = [json.loads(x) for x in (tmp_path / "true" / "records.jsonl").read_text().splitlines()]
    assert out[0]["censored"] is False and out[0]["finish_reason"] == "stop"
    assert out[0]["recorded_finish_reason"] == "length" and out[0]["recorded_censored"] is True
    assert out[-1]["censored"] is True and rs[0]["censored"] is True  # the input is not changed
    # the loop's stage 1 reads them: all but the really censored one
    obs, _ = traces.read_records([str(tmp_path / "true")])
    rows, censored_out = traces.aggregate(obs, keep_censored=False)
    assert len(rows) == 12 and censored_out == 1 and rows[3]["answer_length"] == 13
    assert records.for_the_loop(rs, asked, tmp_path / "raw", true_length=False)["censored_left"] == 13
    obs, _ = traces.read_records([str(tmp_path / "raw")])
    assert traces.aggregate(obs, keep_censored=False)[0] == []


def test_live_gauges_parsed_from_the_metrics_text():
    text = ("# HELP pars_gateway_live_kendall_tau x\n# TYPE pars_gateway_live_kendall_tau gauge\n"
            "pars_gateway_live_kendall_tau 0.25\npars_gateway_live_length_weighted_tau NaN\n"
            "pars_gateway_live_requests 500.0\npars_gateway_requests_total 7.0\n")
    g = records.parse_live_gauges(text)
    assert g["pars_gateway_live_kendall_tau"] == 0.25 and math.isnan(g["pars_gateway_live_length_weighted_tau"])
    assert set(g) == {"pars_gateway_live_kendall_tau", "pars_gateway_live_length_weighted_tau"}


# ---- traffic and the loop --------------------------------------------------------------------------------------


def test_chat_body_and_the_sent_check():
    from experiments.lib.traces import Request

    body = traffic.chat_body("/m", Request("x", "hi there", 3, 900, 512))
    assert body == {"model": "/m", "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 512,
                    "ignore_eos": True, "temperature": 0.0}
    ok = [{"id": str(i), "status": 200, "expected": 5, "completion_tokens": 5, "error": None} for i in range(99)]
    assert traffic.check_sent(ok + [dict(ok[0], status=502, error="HTTP 502")], 0.01, "record")["failed"] == 1
    with pytest.raises(SystemExit, match="2 of 100 requests failed"):
        traffic.check_sent(ok[:98] + [dict(ok[0], status=502, error="boom")] * 2, 0.01, "record")
    with pytest.raises(SystemExit, match="1 came back with another length"):
        traffic.check_sent(ok[:9] + [dict(ok[0], completion_tokens=4)], 0.0, "after")


def loop_args(**kw):
    base = dict(ranker_path="/r/best_model.pt", val_fraction=0.2, min_val_prompts=200, min_train_prompts=500,
                num_epochs=1, batch_size=64, learning_rate=2e-5, retrain_device="cpu", retrain_seed=42,
                max_train_minutes=None, cycle_arg=[])
    return argparse.Namespace(**{**base, **kw})


def test_cycle_command_passes_the_flags_through(tmp_path):
    argv = loop.cycle_argv(loop_args(min_val_prompts=12, max_train_minutes=5, cycle_arg=["--api-key", "k"]),
                           tmp_path / "rec", tmp_path / "out", "http://127.0.0.1:9")
    assert argv[1:3] == ["-c", loop.RUNNER] and "pars.retrain.cycle import cli" in loop.RUNNER

    def flag(name):
        return argv[argv.index(name) + 1]

    assert flag("--records") == str(tmp_path / "rec") and flag("--output-dir") == str(tmp_path / "out")
    assert flag("--deployed").endswith("best_model.pt") and flag("--predictor-url") == "http://127.0.0.1:9"
    assert flag("--min-val-prompts") == "12" and flag("--min-train-prompts") == "500"
    assert flag("--val-fraction") == "0.2" and flag("--learning-rate") == "2e-05" and flag("--seed") == "42"
    assert flag("--max-train-minutes") == "5" and argv[-2:] == ["--api-key", "k"]
    from pars.retrain.cycle import build_parser  # the cycle itself accepts them

    parsed = build_parser().parse_args(argv[3:])
    assert parsed.min_val_prompts == 12 and parsed.learning_rate == 2e-5 and parsed.api_key == "k"


def test_run_cycle_captures_stdout_and_decision(tmp_path, monkeypatch):
    out = tmp_path / "retrain"
    out.mkdir()
    script = ("import json, pathlib, sys; print('table'); print('x', file=sys.stderr); "
              f"pathlib.Path({str(out)!r}, 'decision.json').write_text(json.dumps({{'action': 'kept'}}))")
    res = loop.run_cycle(["python3", "-c", script, "--records", "a b"], out, tmp_path / "s.txt", tmp_path / "e.log",
                         60)
    assert res["returncode"] == 0 and res["stdout"] == "table\n" and res["decision"] == {"action": "kept"}
    assert res["command"] == "pars-retrain --records 'a b'"  # what an operator would type
    assert (tmp_path / "s.txt").read_text() == "table\n" and (tmp_path / "e.log").read_text() == "x\n"
    res = loop.run_cycle(["python3", "-c", "import sys; sys.exit('too few records')"], out, tmp_path / "s.txt",
                         tmp_path / "e.log", 60)
    assert res["returncode"] == 1 and res["decision"] is None and res["stderr_tail"] == ["too few records"]
    res = loop.run_cycle(["python3", "-c", "import time; time.sleep(30)"], out, tmp_path / "s.txt",
                         tmp_path / "e.log", 0.5)
    assert res["returncode"] != 0 and "killed after" in res["stdout"]


def test_loop_outcome_from_the_decision_and_the_ranker_ids():
    reloaded = {"returncode": 0, "decision": {"candidate_better": True, "action": "reloaded", "reload": {}}}
    assert loop.outcome(reloaded, "a", "b")["reloaded"] is True
    kept = {"returncode": 0, "decision": {"candidate_better": False, "action": "kept the deployed ranker"}}
    o = loop.outcome(kept, "a", "a")
    assert o["reloaded"] is False and o["action"].startswith("kept") and "inconsistent" not in o
    assert "inconsistent" in loop.outcome(reloaded, "a", "a")
    silent = loop.outcome({"returncode": 0, "decision": None}, "a", "a")
    assert silent["reloaded"] is False and "wrote no decision.json" in silent["action"]
    failed = loop.outcome({"returncode": 2, "decision": None}, "a", "a")
    assert failed["reloaded"] is False and "the cycle failed (exit 2)" in failed["action"]


# ---- latency: pooling and the report ---------------------------------------------------------------------------


def summary(mean):
    return {m: (mean if m.startswith("e2el") else 20.0) for m in METRICS}


def made_up_seeds():
    per_seed = []
    for k, (f, old, new, o) in enumerate([(10.0, 9.0, 8.0, 7.0), (12.0, 11.0, 9.0, 8.0), (9.0, 9.5, 8.0, 7.5)]):
        runs = {n: {"summary": summary(v)} for n, v in zip(servers.POLICIES, (f, old, new, o), strict=True)}
        per_seed.append({"seed": k, "order": latency.order_for(k), "rate": 1.5, "trace": {"n": 50}, "runs": runs,
                         **latency.seed_ratios(runs),
                         "trace_taus": {"prompts": 50, "pars-old": 0.2, "pars-new": 0.3,
                                        "difference": {"difference": 0.1, "ci95_low": 0.02, "ci95_high": 0.2}}})
    return per_seed


def t95(values):
    v = np.asarray(values)
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return v.mean(), [v.mean() - half, v.mean() + half]


def test_order_rotates_over_the_four_policies():
    orders = [latency.order_for(k) for k in range(4)]
    assert orders[0] == ["fcfs", "pars-old", "pars-new", "oracle"]
    assert [o[0] for o in orders] == ["fcfs", "pars-old", "pars-new", "oracle"]
    assert latency.order_for(4) == orders[0]


def test_ratios_recovery_and_pooling_against_a_direct_computation():
    per_seed = made_up_seeds()
    s = per_seed[0]
    assert s["ratio_old_fcfs"] == pytest.approx(0.9) and s["ratio_new_fcfs"] == pytest.approx(0.8)
    assert s["recovery_old"] == pytest.approx(1 / 3) and s["recovery_new"] == pytest.approx(2 / 3)
    assert s["ratio_new_old"] == pytest.approx(8 / 9) and s["ratio_oracle_fcfs"] == pytest.approx(0.7)
    assert per_seed[2]["recovery_old"] == pytest.approx(-1 / 3)  # pars-old worse than FCFS
    pooled = latency.pool(per_seed)
    for key in latency.RATIOS:
        mean, ci = t95([x[key] for x in per_seed])
        assert pooled[key]["traces"] == 3 and pooled[key]["mean"] == pytest.approx(mean)
        assert pooled[key]["t_ci"] == pytest.approx(ci)
    mean, ci = t95([10.0, 12.0, 9.0])
    assert pooled["fcfs"]["e2el_mean_s"]["mean"] == pytest.approx(mean)
    runs = {n: {"summary": summary(5.0)} for n in servers.POLICIES}
    assert math.isnan(latency.seed_ratios(runs)["recovery_new"])  # no oracle gain: nan, left out of the pool


def made_up_report():
    rng = np.random.default_rng(0)
    y = rng.integers(1, 500, 80).astype(float)

    def phase(noise, rid):
        t = records.taus(list(y + rng.normal(0, noise, 80)), list(y), n_resamples=100)
        live = {"metrics": {}, "health": {"live": {"kendall_tau": None, "length_weighted_tau": None,
                                                   "requests": 80, "censored": 80, "comparable_pairs": 0}}}
        return {"taus": t, "ranker_id": rid, "gateway_live": live}

    per_seed = made_up_seeds()
    after = phase(50, "new")
    after["difference"] = {"kendall_tau": {"difference": 0.2, "ci95": [0.1, 0.3]},
                           "length_weighted_tau": {"difference": 0.1, "ci95": [0.05, 0.2]}}
    decision = {"prompts": 40, "deployed": {"kendall_tau": 0.3, "length_weighted_tau": 0.4},
                "candidate": {"kendall_tau": 0.5, "length_weighted_tau": 0.6},
                "tau_difference": {"difference": 0.2, "ci95_low": 0.1, "ci95_high": 0.3},
                "length_weighted_tau_difference": {"difference": 0.2, "ci95_low": 0.1, "ci95_high": 0.3},
                "candidate_better": True, "action": "reloaded http://a with the candidate", "reload": {}}
    cycle = {"returncode": 0, "wall_s": 30.0, "decision": decision}
    return {"started_at": "2026-12-07T09:00:00+00:00",
            "config": {"record_requests": 80, "after_requests": 80, "num_prompts": 50, "seeds": [0, 1, 2],
                       "load_factor": 1.5},
            "ranker_trained_on": {"val_kendall_tau": 0.377, "val_length_weighted_tau": 0.521},
            "record": phase(300, "old"), "after": after,
            "loop": {"cycle": cycle, "outcome": loop.outcome(cycle, "old", "new")},
            "latency": {"per_seed": per_seed, "pooled": latency.pool(per_seed)}}


def test_report_tables_and_png(tmp_path):
    rep = made_up_report()
    text = report.write_outputs(rep, tmp_path / "x.json")
    assert (tmp_path / "x.png").stat().st_size > 0 and (tmp_path / "x.md").read_text().strip() == text
    assert json.loads((tmp_path / "x.json").read_text())["loop"]["outcome"]["reloaded"] is True
    assert "| record | old | 80 |" in text and "| after | new | 80 |" in text and "| after - before |" in text
    assert "0 comparable pairs" in text and "reloaded: True (ranker old -> new)" in text
    assert "| 40 | candidate | 0.5000 | 0.6000 |" in text
    assert "| mean (t 95%) over 3 |" in text and "pars-new / pars-old" in text and "recovery new" in text
    assert "| 0 | 50 | 0.200 | 0.300 | +0.100 [+0.020, +0.200] |" in text
    # no reload, no latency runs (a cycle that refused): still a report
    rep["loop"] = {"cycle": {"returncode": 2, "decision": None}, "outcome": loop.outcome({"returncode": 2}, "a", "a")}
    rep["latency"] = {"per_seed": [], "pooled": {}}
    text = report.write_outputs(rep, tmp_path / "y.json")
    assert "the cycle failed (exit 2)" in text and "No latency runs." in text and "Not reloaded:" in text
    assert "no comparable pair" in text


# ---- servers and flags ---------------------------------------------------------------------------------------


def test_servers_a_reloadable_and_recording_b_never_reloaded(monkeypatch, tmp_path, checkpoint):
    from experiments.vllm_e2e import servers as e2e_servers

    started = {}

    class Recorder:
        def start(self, name, cmd, env, cwd):
            started[name] = (cmd, env)

    monkeypatch.setattr(e2e_servers, "wait_up", lambda *a, **k: None)
    monkeypatch.setattr(servers, "wait_up", lambda *a, **k: None)
    args = argparse.Namespace(ranker_path=checkpoint, ranker_name=None, fairness_window_s=10.0, model_dir="/m",
                              kvcache_gib=2, vllm_python="py", max_num_seqs=8, max_model_len=2048,
                              predictor_timeout_ms=200.0, startup_timeout_s=1, num_prompts=70)
    urls = servers.start_servers(args, Recorder(), tmp_path / "rec", tmp_path / "rec_old")
    a, b = started["predictor"][1], started["predictor-old"][1]
    assert a["PREDICTOR_ADMIN_RELOAD"] == "true" and b["PREDICTOR_ADMIN_RELOAD"] == "false"
    assert a["PREDICTOR_MODEL_PATH"] == b["PREDICTOR_MODEL_PATH"] == str(checkpoint.resolve())
    port = {n: started[n][0][started[n][0].index("--port") + 1] for n in ("predictor", "predictor-old")}
    new, old = started["pars-new-gw"][1], started["pars-old-gw"][1]
    assert new["GATEWAY_PREDICTOR_URL"].endswith(port["predictor"]) and new["GATEWAY_RECORD_DIR"] == str(
        tmp_path / "rec")
    assert old["GATEWAY_PREDICTOR_URL"].endswith(port["predictor-old"]) and old["GATEWAY_RECORD_DIR"] == str(
        tmp_path / "rec_old")
    assert new["GATEWAY_FAIRNESS_WINDOW_S"] == old["GATEWAY_FAIRNESS_WINDOW_S"] == "10.0"
    # every scored arm's quantile window holds one latency trace, which the phase primes alike
    assert new["GATEWAY_QUANTILE_WINDOW"] == old["GATEWAY_QUANTILE_WINDOW"] == \
        started["oracle-gw"][1]["GATEWAY_QUANTILE_WINDOW"] == "70"
    assert started["fcfs-gw"][1]["GATEWAY_SCORER"] == "none" and started["oracle-gw"][1]["GATEWAY_SCORER"] == \
        "max_tokens" and "GATEWAY_RECORD_DIR" not in started["oracle-gw"][1]
    assert not any(n.startswith("predictor") for n in started if n not in ("predictor", "predictor-old"))
    gw_port = started["pars-new-gw"][0][started["pars-new-gw"][0].index("--port") + 1]
    assert urls["pars-new"].endswith(gw_port) and set(urls) >= {"vllm", "predictor", "predictor-old",
                                                                *servers.POLICIES}


def call(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return exc.value.code, capsys.readouterr()


def test_help_and_one_line_errors(tmp_path, capsys, checkpoint):
    code, out = call(["--help"], capsys)
    assert code == 0 and "--record-requests" in out.out and "pars.retrain.cycle" in out.out
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    py = tmp_path / "python"
    py.write_text("")
    base = ["--model-dir", str(model), "--vllm-python", str(py), "--ranker-path", str(checkpoint), "--start"]
    for extra, message in ([["--min-turn", "1"], "--min-turn must be 2 or more"],
                           [["--seeds", "1,1"], "--seeds must be"],
                           [["--record-requests", "100"], "gives the cycle 80 training and 20 held-out prompts"],
                           [["--record-requests", "0"], "--record-requests must be at least 1"],
                           [["--seen-data", str(tmp_path / "no.json")], "no such file"],
                           [["--val-fraction", "1"], "--val-fraction must be in (0, 1)"],
                           [["--load-factor", "0"], "--load-factor and --request-rate must be positive"],
                           [["--num-prompts", "8"], "--capacity-prompts must be 1 to"]):
        code, out = call(base + extra, capsys)
        assert code == 2 and message in out.err and len(out.err.strip().splitlines()) == 1, out.err
    code, out = call(base[:-1], capsys)
    assert code == 2 and "without --start, give --vllm-url, --predictor-url, --predictor-old-url" in out.err
    assert "--records-dir" in out.err
    code, out = call(base[:4] + ["--vllm-python", str(py), "--ranker-path", str(tmp_path / "x.pt")], capsys)
    assert code == 2 and "no such checkpoint" in out.err
    # a tiny run may lower the cycle's minimums to what it records
    args = cli.parser().parse_args(base + ["--record-requests", "60", "--min-val-prompts", "10",
                                           "--min-train-prompts", "40"])
    cli.check(args)
    assert args.capacity_prompts == 16


def test_default_paths_keep_records_out_of_the_run_folder(tmp_path, checkpoint):
    args = cli.parser().parse_args(["--model-dir", "m", "--ranker-path", str(checkpoint), "--start"])
    where = cli.paths(args)
    assert where["out"].parent.name.endswith("_loop_bench") and where["out"].parent.parent.name == "runs"
    assert str(where["records"]).startswith("/tmp/") and where["records"].parent == where["work"]
    assert where["client"] == where["out"].with_name("loop_bench_client")
    args = cli.parser().parse_args(["--model-dir", "m", "--ranker-path", str(checkpoint), "--out",
                                    str(tmp_path / "smoke" / "lb.json"), "--records-dir", str(tmp_path / "r")])
    where = cli.paths(args)
    assert where["records"] == tmp_path / "r" and str(where["work"]) == "/tmp/smoke_work"
    assert where["records_old"] is None and where["logs"] == cli.Path("/tmp/smoke_logs")
