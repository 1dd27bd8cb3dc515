"""experiments/e2e_guard.py: the guard's trade-off per trace and pooled over traces, against numbers worked out
by hand."""

from __future__ import annotations

import json

import pytest

from experiments import e2e_guard as guard


def report(seed: int, runs: dict[str, list[tuple[float, float]]], rate: float = 3.0) -> dict:
    """An experiment of trace `seed` at load factor 2: per policy, (mean s, p99 s) of each repeat."""
    out = [{"rate": rate, "policy": p, "repeat": rep, "trace_sha": f"sha{seed}",
            "summary": {"latency_s": {"mean": m, "p99": p99}}}
           for p, reps in runs.items() for rep, (m, p99) in enumerate(reps)]
    # a run at another load factor that must not be pooled
    out.append({"rate": rate / 2, "policy": "pars@20", "repeat": 0, "trace_sha": f"sha{seed}",
                "summary": {"latency_s": {"mean": 100.0, "p99": 100.0}}})
    return {"capacity": {"load_factors": {f"{rate:g}": 2.0, f"{rate / 2:g}": 1.0}}, "trace": {"seed": seed},
            "runs": out}


def write(tmp_path, name: str, r: dict) -> str:
    (tmp_path / name).write_text(json.dumps(r))
    return str(tmp_path / name)


def test_trade_off_by_hand(tmp_path, capsys):
    # trace 0, two repeats: fcfs (20, 40) and (10, 30); pars@1000 gains 6 and 2; pars@20 gains 3 and 1
    # -> kept (3 + 1) / (6 + 2) = 0.5; p99 ratios 44/40 and 33/30 -> 1.1
    t0 = write(tmp_path, "s0.json", report(0, {
        "fcfs": [(20.0, 40.0), (10.0, 30.0)], "oracle": [(10.0, 60.0), (6.0, 45.0)],
        "pars@20": [(17.0, 44.0), (9.0, 33.0)], "pars@1000": [(14.0, 56.0), (8.0, 42.0)]}))
    # trace 1, one repeat: pars@20 keeps 4 of 5 (0.8) at p99 1.24x; pars@1000 at 1.5x
    t1 = write(tmp_path, "s1.json", report(1, {
        "fcfs": [(15.0, 20.0)], "oracle": [(8.0, 30.0)], "pars@20": [(11.0, 24.8)], "pars@1000": [(10.0, 30.0)]}))
    out = tmp_path / "guard.json"
    assert guard.main([t0, t1, "--load-factor", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["policy"]: r for r in result["windows"]}
    assert set(rows) == {"pars@20", "pars@1000"} and result["traces"] == 2
    w20 = rows["pars@20"]
    per = {t: v for t, v in w20["per_trace"].items()}
    assert per["seed 0 (sha0)"]["gain_kept"] == pytest.approx(0.5)
    assert per["seed 0 (sha0)"]["p99_ratio"] == pytest.approx(1.1)
    assert per["seed 0 (sha0)"]["mean_ratio"] == pytest.approx((17 / 20 + 9 / 10) / 2)
    assert per["seed 1 (sha1)"]["gain_kept"] == pytest.approx(0.8)
    assert per["seed 1 (sha1)"]["p99_ratio"] == pytest.approx(1.24)
    assert w20["gain_kept"]["mean"] == pytest.approx(0.65) and w20["p99_ratio"]["mean"] == pytest.approx(1.17)
    assert w20["p99_ratio"]["t_ci"][0] < 1.1 and w20["p99_ratio"]["t_ci"][1] > 1.24
    # p99 1.17 <= 1.2 and 0.65 >= 0.5: met; the reference (no guard) never counts as meeting it
    assert w20["meets_target"] is True and rows["pars@1000"]["meets_target"] is False
    assert rows["pars@1000"]["gain_kept"]["mean"] == pytest.approx(1.0)
    assert result["met_by"] == ["pars@20"]
    printed = capsys.readouterr().out
    assert "met by pars@20" in printed and "| pars@20 | 2 | 1.17 [" in printed
    assert out.with_suffix(".png").stat().st_size > 0


def test_target_missed_when_the_tail_is_too_long(tmp_path, capsys):
    t0 = write(tmp_path, "s0.json", report(0, {
        "fcfs": [(20.0, 40.0)], "pars@20": [(15.0, 52.0)], "pars@1000": [(14.0, 56.0)]}))
    assert guard.main([t0, "--load-factor", "2"]) == 0
    assert "not met" in capsys.readouterr().out
    rows = guard.tradeoff(guard_traces(t0), "fcfs", 1.2, 0.5)
    assert rows[0]["p99_ratio"]["mean"] == pytest.approx(1.3) and rows[0]["meets_target"] is False


def guard_traces(path: str) -> dict:
    r = json.loads(open(path).read())
    return {"t": guard.runs_at(r, 3.0, "x")}


def test_two_experiments_of_one_trace_add_repeats(tmp_path):
    """The same trace replayed twice: its repeats 0 from both experiments count, not the last one alone."""
    a = write(tmp_path, "a.json", report(0, {"fcfs": [(20.0, 40.0)], "pars@20": [(18.0, 40.0)],
                                              "pars@1000": [(16.0, 40.0)]}))
    b = write(tmp_path, "b.json", report(0, {"fcfs": [(20.0, 40.0)], "pars@20": [(14.0, 40.0)],
                                              "pars@1000": [(12.0, 40.0)]}))
    out = tmp_path / "g.json"
    assert guard.main([a, b, "--load-factor", "2", "--out", str(out)]) == 0
    row = next(r for r in json.loads(out.read_text())["windows"] if r["policy"] == "pars@20")
    (only,) = row["per_trace"].values()
    assert only["repeats"] == 2 and only["gain_kept"] == pytest.approx((2 + 6) / (4 + 8))


def test_vanished_reference_gain_is_left_out_not_divided(tmp_path):
    # on this trace the unguarded ranker gained nothing: its share kept is undefined and not pooled
    t0 = write(tmp_path, "s0.json", report(0, {"fcfs": [(20.0, 40.0)], "pars@20": [(19.0, 40.0)],
                                               "pars@1000": [(20.0, 41.0)]}))
    t1 = write(tmp_path, "s1.json", report(1, {"fcfs": [(20.0, 40.0)], "pars@20": [(17.0, 40.0)],
                                               "pars@1000": [(14.0, 44.0)]}))
    out = tmp_path / "g.json"
    assert guard.main([t0, t1, "--load-factor", "2", "--out", str(out)]) == 0
    row = next(r for r in json.loads(out.read_text())["windows"] if r["policy"] == "pars@20")
    assert row["gain_kept"]["traces"] == 1 and row["gain_kept"]["mean"] == pytest.approx(0.5)
    assert row["p99_ratio"]["traces"] == 2


def test_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit) as exc:
        guard.main([str(bad), "--load-factor", "2"])
    assert str(exc.value).startswith("error: cannot read")
    no_pars = write(tmp_path, "n.json", report(0, {"fcfs": [(20.0, 40.0)], "oracle": [(10.0, 50.0)]}))
    with pytest.raises(SystemExit) as exc:
        guard.main([no_pars, "--load-factor", "2"])
    assert "no pars@W policy" in str(exc.value)
