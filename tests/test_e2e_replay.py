"""experiments/e2e_replay.py: an experiment's runs replayed through the scheduler model with the priorities they
sent, on a case worked out by hand (the one of tests/test_sched_sim.py)."""

from __future__ import annotations

import json

import pytest

from experiments import e2e_replay as replay

# One slot; A (3 tokens) sent at 0, B (2) and C (1) at 0.5. A measured capacity of 1 token/s with one slot
# makes the model's step exactly 1 s.
SENT = [0.0, 0.5, 0.5]
TOKENS = [3, 2, 1]


def run(policy: str, priorities: list[int], real: list[float], repeat: int = 0,
        score_ms: list[float] | None = None) -> dict:
    return {"rate": 2.0, "policy": policy, "repeat": repeat,
            "requests": [{"i": i, "sent_s": SENT[i], "priority": priorities[i], "latency_s": real[i],
                          "score_ms": score_ms[i] if score_ms else None} for i in range(3)]}


def report() -> dict:
    return {"config": {"max_num_seqs": 1}, "capacity": {"tokens_per_s": 1.0},
            "trace": {"max_tokens": TOKENS, "prompt_tokens": [10, 10, 10]},
            "runs": [run("fcfs", [0, 0, 0], [3.0, 4.5, 5.5]),         # real mean 13/3
                     run("oracle", TOKENS, [3.0, 5.5, 3.5]),           # real mean 4
                     # the gateway sent C before B (as the oracle), but the real run did only half as well
                     # C's score took 3 s: with --score-delay it reaches the server at 3.5 s
                     run("pars@60", [5, 9, 1], [3.0, 5.0, 4.5], score_ms=[0.0, 0.0, 3000.0]),  # recovered 0.5
                     run("prompt-length", [5, 1, 9], [3.0, 4.5, 5.5])]}


def test_model_with_the_sent_priorities_by_hand():
    result = replay.replay(report(), [0.0, 0.5])
    assert result["step_scale"] == pytest.approx(1000.0 / 8.2)  # 6 + 2.2 ms at one sequence -> 1 s
    rows = {r["policy"]: r for r in result["rows"]}
    assert rows["fcfs"]["model_mean_s"]["0"] == pytest.approx(13 / 3)
    assert rows["oracle"]["model_mean_s"]["0"] == pytest.approx(4.0)
    # with the priorities pars@60 sent, the model serves it as the oracle: all of the gain; the real run, half
    assert rows["pars@60"]["model_recovered"]["0"] == pytest.approx(1.0)
    assert rows["pars@60"]["real_recovered"] == pytest.approx(0.5)
    assert rows["prompt-length"]["model_recovered"]["0"] == pytest.approx(0.0)
    # the last answer: A at 3, then B and C by 6 s under every order; the real pars run's came at 5.5
    assert rows["fcfs"]["model_last_answer_s"]["0"] == pytest.approx(6.0)
    assert rows["pars@60"]["real_last_answer_s"] == pytest.approx(5.5)
    # a prefill cost makes every step that admits a request longer
    assert rows["fcfs"]["model_mean_s"]["0.5"] > rows["fcfs"]["model_mean_s"]["0"]


def test_score_delay_lets_a_worse_request_take_the_slot():
    """C, held 3 s by its scoring, misses the slot A frees at 3 s: B takes it, as under FCFS. Latencies still
    count from the send: A 3, B 4.5, C 5.5 (its 3 s of scoring included)."""
    rows = {r["policy"]: r for r in replay.replay(report(), [0.0], score_delay=True)["rows"]}
    assert rows["pars@60"]["model_mean_s"]["0"] == pytest.approx(13 / 3)
    assert rows["pars@60"]["model_recovered"]["0"] == pytest.approx(0.0)
    assert rows["fcfs"]["model_mean_s"]["0"] == pytest.approx(13 / 3)  # runs without score_ms are unchanged


def test_fit_finds_the_costs_that_made_the_real_latencies():
    """Real latencies made by the model at step factor 1 with no prefill or context cost (pars@60 sent the
    oracle's order and got its latencies): that grid point fits exactly, and is reported first."""
    rep = report()
    for q, lat in zip(rep["runs"][2]["requests"], [3.0, 5.5, 3.5], strict=True):
        q["latency_s"] = lat
    fits = replay.fit(rep, [0.5, 1.0], [0.0, 0.5], [0.0, 0.1], top=8)
    assert [f["sse_mean_s2"] for f in fits] == sorted(f["sse_mean_s2"] for f in fits)
    best = fits[0]
    assert (best["step_factor"], best["prefill_ms_per_token"], best["context_ms_per_token"]) == (1.0, 0.0, 0.0)
    assert best["sse_mean_s2"] < 1e-12 < fits[1]["sse_mean_s2"]
    assert best["real_recovered"]["2/pars@60"] == pytest.approx(1.0) == best["model_recovered"]["2/pars@60"]


def test_cli_writes_json_and_rejects_a_non_report(tmp_path, capsys):
    src = tmp_path / "e2e.json"
    src.write_text(json.dumps(report()))
    out = tmp_path / "replay.json"
    assert replay.main([str(src), "--prefill-ms-per-token", "0", "--out", str(out)]) == 0
    assert "| pars@60 |" in capsys.readouterr().out and json.loads(out.read_text())["rows"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit):
        replay.main([str(tmp_path / "bad.json")])
    assert "is not a vllm_e2e.py report" in capsys.readouterr().err


def test_speed_per_run_and_equal_by_hand():
    """The PARS run sent the oracle's order but ran on a server twice as slow (every step 2 s): A 0-6 s,
    C 6-8 s, B 8-12 s. per-run finds each run's own speed from its last answer (1 for fcfs and the oracle,
    2 for pars) and so reproduces the real loss; equal runs pars at its repeat's fcfs and oracle speed and
    models the oracle's latencies for it: all of the gain."""
    rep = report()
    rep["runs"] = [run("fcfs", [0, 0, 0], [3.0, 4.5, 5.5]), run("oracle", TOKENS, [3.0, 5.5, 3.5]),
                   run("pars@60", [5, 9, 1], [6.0, 11.5, 7.5])]
    per_run = {r["policy"]: r for r in replay.replay(rep, [0.0], speed="per-run")["rows"]}
    assert per_run["fcfs"]["speed_factor"]["0"] == pytest.approx(1.0, rel=1e-6)
    assert per_run["pars@60"]["speed_factor"]["0"] == pytest.approx(2.0, rel=1e-6)
    assert per_run["pars@60"]["model_mean_s"]["0"] == pytest.approx(25 / 3, rel=1e-6)
    assert per_run["pars@60"]["model_recovered"]["0"] == pytest.approx(per_run["pars@60"]["real_recovered"],
                                                                       rel=1e-5)
    assert per_run["pars@60"]["real_recovered"] == pytest.approx((13 / 3 - 25 / 3) / (13 / 3 - 4))
    equal = {r["policy"]: r for r in replay.replay(rep, [0.0], speed="equal")["rows"]}
    assert equal["pars@60"]["model_mean_s"]["0"] == pytest.approx(4.0, rel=1e-6)
    assert equal["pars@60"]["model_recovered"]["0"] == pytest.approx(1.0, rel=1e-5)
    assert equal["pars@60"]["speed_factor"]["0"] == pytest.approx(2.0, rel=1e-6)  # its own, as measured
    with pytest.raises(ValueError, match="speed"):
        replay.replay(rep, [0.0], speed="fast")
