"""experiments/e2e_speed.py: real recovery against the scheduler model at three server speeds per run, on the
hand-made case of tests/test_e2e_replay.py (one slot, a 1 s step at the measured capacity)."""

from __future__ import annotations

import json

import pytest

from experiments import e2e_replay
from experiments import e2e_speed as speed

SENT = [0.0, 0.5, 0.5]
TOKENS = [3, 2, 1]
ORACLE_AT_1 = [3.0, 5.5, 3.5]  # the oracle's order on a 1 s step: A 0-3, C 3-4, B 4-6
ORACLE_AT_2 = [6.0, 11.5, 7.5]  # the same order on a 2 s step: A 0-6, C 6-8, B 8-12


def run(policy: str, priorities: list[int], real: list[float], sha: str) -> dict:
    return {"rate": 2.0, "policy": policy, "repeat": 0, "trace_sha": sha,
            "requests": [{"i": i, "sent_s": SENT[i], "priority": priorities[i], "latency_s": real[i],
                          "score_ms": None} for i in range(3)]}


def report(sha: str, pars_real: list[float], name: str = "pars@60") -> dict:
    return {"config": {"max_num_seqs": 1}, "capacity": {"tokens_per_s": 1.0},
            "trace": {"seed": int(sha), "max_tokens": TOKENS, "prompt_tokens": [10, 10, 10]},
            "runs": [run("fcfs", [0, 0, 0], [3.0, 4.5, 5.5], sha), run("oracle", TOKENS, ORACLE_AT_1, sha),
                     run(name, [5, 9, 1], pars_real, sha)]}


def test_a_slow_scored_run_by_hand():
    """pars sent the oracle's order but ran at half speed: the real run and the per-run model lose
    (13/3 - 25/3) / (13/3 - 4) = -12 of the gain, the model at capacity or at equal speed recovers all of it,
    and its runs were 100 % slower than the direct ones."""
    cell = speed.experiment(report("1", ORACLE_AT_2), 0.0, {})["pars@60"]
    assert cell["real"] == pytest.approx(-12.0)
    assert cell["model"]["per-run"] == pytest.approx(-12.0, rel=1e-5)
    assert cell["model"]["capacity"] == pytest.approx(1.0)
    assert cell["model"]["equal"] == pytest.approx(1.0, rel=1e-5)
    assert cell["slower_than_direct"] == pytest.approx(1.0, rel=1e-5)


def test_pooled_by_trace_with_aliases(tmp_path, capsys):
    """Two traces, the ranker named differently in each (--same): the trace means are averaged, not the
    repeats, and one of the two traces ran slower."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(report("1", ORACLE_AT_2)))
    b.write_text(json.dumps(report("2", ORACLE_AT_1, name="pars[x]@60")))
    out = tmp_path / "speed.json"
    assert speed.main([str(a), str(b), "--prefill-ms-per-token", "0", "--same", "pars@60=pars[x]@60",
                       "--out", str(out)]) == 0
    pooled = json.loads(out.read_text())["pooled"]["pars@60"]
    assert pooled["traces"] == 2 and pooled["traces_slower"] == 1
    assert pooled["by_trace"]["real"]["mean"] == pytest.approx((-12.0 + 1.0) / 2)
    assert pooled["by_trace"]["equal"]["mean"] == pytest.approx(1.0, rel=1e-5)
    assert pooled["by_trace"]["slower_than_direct"]["mean"] == pytest.approx(0.5, rel=1e-5)
    assert out.with_suffix(".png").stat().st_size > 0
    assert "| **mean over traces** |" in capsys.readouterr().out


def test_not_a_report_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        speed.main([str(tmp_path / "bad.json")])
    assert exc.value.code == 2 and "is not a vllm_e2e.py report" in capsys.readouterr().err


def test_speed_factors_are_bisected_once_per_run(monkeypatch):
    """per-run and equal share each run's factor: 3 runs bisected once each, with the same results."""
    replay_mod = e2e_replay
    want = speed.experiment(report("1", ORACLE_AT_2), 0.0, {})
    calls = []
    real = replay_mod.speed_factor
    monkeypatch.setattr(replay_mod, "speed_factor", lambda *a: calls.append(1) or real(*a))
    assert speed.experiment(report("1", ORACLE_AT_2), 0.0, {}) == want
    assert len(calls) == 3
