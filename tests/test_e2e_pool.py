"""experiments/e2e_pool.py: per-repeat recoveries taken within each experiment, pooled across experiments by
load factor, checked against numbers worked out by hand."""

from __future__ import annotations

import json

import pytest

from experiments import e2e_pool as pool


def report(rate: float, lf: float, means: dict[str, list[float]], speeds: dict[str, list[float]] | None = None) -> dict:
    speeds = speeds or {}
    runs = [{"rate": rate, "policy": p, "repeat": rep,
             "summary": {"latency_s": {"mean": m}, "makespan_s": 3.0 * m,
                         "output_tokens_per_s": speeds.get(p, [100.0] * len(ms))[rep]}}
            for p, ms in means.items() for rep, m in enumerate(ms)]
    # a run at another load factor that must not be pooled
    runs.append({"rate": rate / 2, "policy": "pars@60", "repeat": 0,
                 "summary": {"latency_s": {"mean": 0.0}, "makespan_s": 0.0, "output_tokens_per_s": 1.0}})
    return {"note": "synthetic", "capacity": {"load_factors": {f"{rate:g}": lf, f"{rate / 2:g}": lf / 2}},
            "runs": runs}


def test_pooled_recovery_by_hand(tmp_path, capsys):
    # experiment 1: oracle gains 10 and 4; pars@60 gains 6 and 1 -> recoveries 0.6 and 0.25, sums 7/14
    a = report(3.0, 2.0, {"fcfs": [20.0, 14.0], "oracle": [10.0, 10.0], "pars@60": [14.0, 13.0]})
    # experiment 2, another day's rate: oracle gain 5, pars@60 gain 4 -> 0.8
    b = report(2.8, 2.0, {"fcfs": [15.0], "oracle": [10.0], "pars@60": [11.0]})
    paths = []
    for name, r in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(r))
        paths.append(str(tmp_path / name))
    out = tmp_path / "pool.json"
    assert pool.main([*paths, "--load-factor", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    first = result["experiments"][0]["recovered"]["pars@60"]
    assert first["per_repeat"] == pytest.approx([0.6, 0.25]) and first["ratio_of_sums"] == pytest.approx(0.5)
    pooled = result["pooled"]["pars@60"]
    assert pooled["repeats"] == 3 and pooled["mean"] == pytest.approx((0.6 + 0.25 + 0.8) / 3)
    assert pooled["ratio_of_sums"] == pytest.approx((6 + 1 + 4) / (10 + 4 + 5))
    assert pooled["t_ci"][0] < pooled["mean"] < pooled["t_ci"][1]
    assert "| pooled |" in capsys.readouterr().out
    assert out.with_suffix(".png").stat().st_size > 0
    # two runs per policy: too few for a correlation
    assert result["experiments"][0]["duration_vs_mean_corr"]["pars@60"] is None


def test_same_pools_one_ranker_under_two_names(tmp_path, capsys):
    # a: the ranker alone (pars@60 recovers 0.6); b: two rankers compared, ours named pars[x]@60 (0.8)
    a = report(3.0, 2.0, {"fcfs": [20.0], "oracle": [10.0], "pars@60": [14.0]})
    b = report(2.8, 2.0, {"fcfs": [15.0], "oracle": [10.0], "pars[x]@60": [11.0], "pars[y]@60": [14.0]})
    for name, r in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(r))
    out = tmp_path / "pool.json"
    assert pool.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--load-factor", "2",
                      "--same", "pars@60=pars[x]@60", "--out", str(out)]) == 0
    pooled = json.loads(out.read_text())["pooled"]
    assert pooled["pars@60"]["per_repeat"] == pytest.approx([0.6, 0.8])
    assert pooled["pars[y]@60"]["per_repeat"] == pytest.approx([0.2]) and "pars[x]@60" not in pooled
    with pytest.raises(SystemExit):  # an experiment with both names would mix two policies
        pool.main([str(tmp_path / "b.json"), "--load-factor", "2", "--same", "pars[x]@60=pars[y]@60"])
    assert "both pars[y]@60 and pars[x]@60" in capsys.readouterr().err


def test_priority_tau_of_what_each_run_sent(tmp_path, capsys):
    r = report(3.0, 2.0, {"fcfs": [20.0, 20.0], "oracle": [10.0, 10.0], "pars@60": [14.0, 15.0]})
    r["trace"] = {"max_tokens": [10, 20, 30, 40]}
    sent = {("oracle", 0): [10, 20, 30, 40], ("oracle", 1): [10, 20, 30, 40],
            # repeat 0 in the served order (tau 1); repeat 1 with the last two swapped: 5 of 6 pairs agree,
            # tau = (5 - 1) / 6
            ("pars@60", 0): [1, 2, 3, 4], ("pars@60", 1): [1, 2, 4, 3]}
    for run in r["runs"]:
        if (run["policy"], run["repeat"]) in sent:
            run["requests"] = [{"i": i, "priority": p} for i, p in enumerate(sent[(run["policy"], run["repeat"])])]
        elif run["policy"] == "fcfs":
            run["requests"] = [{"i": i, "priority": 0} for i in range(4)]
    taus = pool.priority_tau(r, 3.0)
    assert set(taus) == {"oracle", "pars@60"}  # fcfs sends no order
    assert taus["oracle"] == {"median": 1.0, "min": 1.0, "max": 1.0, "runs": 2, "weighted": 1.0}
    assert taus["pars@60"]["min"] == pytest.approx(4 / 6) and taus["pars@60"]["max"] == pytest.approx(1.0)
    assert taus["pars@60"]["median"] == pytest.approx((1 + 4 / 6) / 2)
    # weighted: the swapped pair differs by 10 of the 100 summed over all pairs, so repeat 1 has 0.8
    assert taus["pars@60"]["weighted"] == pytest.approx((1 + 0.8) / 2)
    (tmp_path / "a.json").write_text(json.dumps(r))
    assert pool.main([str(tmp_path / "a.json"), "--load-factor", "2"]) == 0
    assert "| a |  | 0.833 |" in capsys.readouterr().out  # no capacity recorded: tokens/s blank


def test_gateway_baselines(tmp_path):
    # through the gateway: fcfs-gw 21, oracle-gw 11 -> pars@60 at 14 recovers 0.7 (against 0.6 direct)
    r = report(3.0, 2.0, {"fcfs": [20.0], "oracle": [10.0], "fcfs-gw": [21.0], "oracle-gw": [11.0],
                          "pars@60": [14.0]})
    (tmp_path / "a.json").write_text(json.dumps(r))
    out = tmp_path / "pool.json"
    assert pool.main([str(tmp_path / "a.json"), "--load-factor", "2", "--baseline", "fcfs-gw",
                      "--ceiling", "oracle-gw", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["pooled"]["pars@60"]["mean"] == pytest.approx(0.7)


def test_speed_adjusted_takes_out_a_slow_run(tmp_path):
    # pars@60 ran on a server 10 % slower than the others (speed 90 against 100): mean 15.4 -> 14.0 adjusted
    r = report(3.0, 2.0, {"fcfs": [20.0], "oracle": [10.0], "pars@60": [14.0 / 0.9]},
               {"pars@60": [90.0]})
    (tmp_path / "a.json").write_text(json.dumps(r))
    out = tmp_path / "pool.json"
    assert pool.main([str(tmp_path / "a.json"), "--load-factor", "2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["pooled"]["pars@60"]["mean"] == pytest.approx((20 - 14 / 0.9) / 10)
    assert pool.main([str(tmp_path / "a.json"), "--load-factor", "2", "--speed-adjusted", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["pooled"]["pars@60"]["mean"] == pytest.approx(0.6)


def test_duration_correlation():
    r = report(3.0, 2.0, {"fcfs": [20.0, 18.0, 25.0]})  # every duration 3x its mean
    assert pool.duration_correlation(r, 3.0)["fcfs"] == pytest.approx(1.0)


def test_missing_load_factor_is_one_line(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(report(3.0, 2.0, {"fcfs": [1.0], "oracle": [0.5]})))
    with pytest.raises(SystemExit, match="no runs at load factor 1.25"):
        pool.main([str(tmp_path / "a.json"), "--load-factor", "1.25"])


def test_by_trace_counts_a_trace_once(tmp_path, capsys):
    """Two experiments on trace s0 (recoveries 0.6, 0.2 and 0.4) and one on trace s1 (0.8, 0.8): the pooled
    mean weights repeats, the by-trace mean weights traces: (0.4 + 0.8) / 2."""
    def on_trace(r: dict, seed: int, sha: str) -> dict:
        r["trace"] = {"seed": seed}
        for run in r["runs"]:
            run["trace_sha"] = sha
        return r

    a = on_trace(report(3.0, 2.0, {"fcfs": [20.0, 20.0], "oracle": [10.0, 10.0], "pars@60": [14.0, 18.0]}), 0, "aa")
    b = on_trace(report(2.9, 2.0, {"fcfs": [20.0], "oracle": [10.0], "pars@60": [16.0]}), 0, "aa")
    c = on_trace(report(2.8, 2.0, {"fcfs": [15.0, 15.0], "oracle": [10.0, 10.0], "pars@60": [11.0, 11.0]}), 1, "bb")
    paths = []
    for name, r in (("a.json", a), ("b.json", b), ("c.json", c)):
        (tmp_path / name).write_text(json.dumps(r))
        paths.append(str(tmp_path / name))
    out = tmp_path / "pool.json"
    assert pool.main([*paths, "--load-factor", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["pooled"]["pars@60"]["mean"] == pytest.approx((0.6 + 0.2 + 0.4 + 0.8 + 0.8) / 5)
    traces = result["by_trace"]["pars@60"]
    assert traces["traces"] == 2
    assert {t["trace"]: (t["repeats"], t["mean"]) for t in traces["per_trace"]} == {
        "seed 0 (aa)": (3, pytest.approx(0.4)), "seed 1 (bb)": (2, pytest.approx(0.8))}
    assert traces["mean"] == pytest.approx(0.6) and traces["t_ci"][0] < 0.6 < traces["t_ci"][1]
    assert [e["trace"] for e in result["experiments"]] == ["seed 0 (aa)", "seed 0 (aa)", "seed 1 (bb)"]
    assert "traces=2" in capsys.readouterr().out


def test_by_trace_ratio_of_sums_survives_a_repeat_whose_oracle_gain_vanished(tmp_path, capsys):
    """Trace s0: repeat 0 recovers 6 of the oracle's 10 s (0.6); in repeat 1 the oracle gains only 0.1 s and
    the ranker 1 s, a ratio of 10 (run S's seed 52). The mean of its ratios is 5.3; the ratio of its summed
    gains is 7 / 10.1. Trace s1 recovers 0.6 in both repeats."""
    def write(name: str, seed: int, means: dict[str, list[float]]) -> str:
        r = report(3.0, 2.0, means)
        r["trace"] = {"seed": seed}
        for run in r["runs"]:
            run["trace_sha"] = f"sha{seed}"
        (tmp_path / name).write_text(json.dumps(r))
        return str(tmp_path / name)

    paths = [write("s0.json", 0, {"fcfs": [20.0, 20.0], "oracle": [10.0, 19.9], "pars@1000": [14.0, 19.0]}),
             write("s1.json", 1, {"fcfs": [15.0, 15.0], "oracle": [10.0, 10.0], "pars@1000": [12.0, 12.0]})]
    out = tmp_path / "pool.json"
    assert pool.main([*paths, "--load-factor", "2", "--out", str(out)]) == 0
    traces = json.loads(out.read_text())["by_trace"]["pars@1000"]
    per = {t["trace"]: t for t in traces["per_trace"]}
    assert per["seed 0 (sha0)"]["mean"] == pytest.approx(5.3)
    assert per["seed 0 (sha0)"]["ratio_of_sums"] == pytest.approx(7 / 10.1)
    assert per["seed 1 (sha1)"]["ratio_of_sums"] == pytest.approx(0.6)
    sums = traces["ratio_of_sums"]
    assert sums["traces"] == 2 and sums["mean"] == pytest.approx((7 / 10.1 + 0.6) / 2)
    assert sums["t_ci"][0] < sums["mean"] < sums["t_ci"][1]
    assert traces["mean"] == pytest.approx((5.3 + 0.6) / 2)  # the mean of ratios, dragged by one repeat
    assert "ratios of summed gains" in capsys.readouterr().out


def test_experiments_without_a_trace_digest_are_traces_of_their_own(tmp_path):
    a = report(3.0, 2.0, {"fcfs": [20.0], "oracle": [10.0], "pars@60": [14.0]})
    (tmp_path / "a.json").write_text(json.dumps(a))
    out = tmp_path / "pool.json"
    assert pool.main([str(tmp_path / "a.json"), "--load-factor", "2", "--out", str(out)]) == 0
    traces = json.loads(out.read_text())["by_trace"]["pars@60"]
    assert traces["traces"] == 1 and traces["t_ci"] is None and traces["mean"] == pytest.approx(0.6)


def test_model_curve_takes_each_rankers_largest_window(tmp_path, capsys):
    def row(ranker, policy, lf, rec):
        return {"load_factor": lf, "ranker": ranker, "policy": policy, "recovered_pooled": rec,
                "recovered_p10_p90": None if rec is None else [rec - 0.1, rec + 0.1]}

    sim = {"ranker_tau_vs_max_tokens": {"good": 0.6, "weak": 0.3},
           "summary": [row("good", "fcfs", 2.0, None), row("good", "pars@60", 2.0, 0.5),
                       row("good", "pars@1000", 2.0, 0.8), row("weak", "pars@1000", 2.0, 0.4),
                       row("weak", "pars@1000", 1.0, 0.9)]}
    curve = pool.model_curve(sim, 2.0)
    assert [(c["ranker"], c["policy"], c["recovered"]) for c in curve] == [("weak", "pars@1000", 0.4),
                                                                           ("good", "pars@1000", 0.8)]
    (tmp_path / "sim.json").write_text(json.dumps(sim))
    r = report(3.0, 2.0, {"fcfs": [20.0], "oracle": [10.0], "pars@60": [14.0]})
    r["trace"] = {"max_tokens": [10, 20]}
    for run in r["runs"]:
        run["requests"] = [{"i": 0, "priority": 1}, {"i": 1, "priority": 2}]
    (tmp_path / "a.json").write_text(json.dumps(r))
    out = tmp_path / "pool.json"
    assert pool.main([str(tmp_path / "a.json"), "--load-factor", "2", "--model", str(tmp_path / "sim.json"),
                      "--out", str(out)]) == 0
    assert json.loads(out.read_text())["model_curve"]["points"][1]["tau"] == 0.6
    assert (tmp_path / "pool_vs_tau.png").stat().st_size > 0
    with pytest.raises(SystemExit):  # no pars rows at this load factor
        pool.main([str(tmp_path / "a.json"), "--load-factor", "1.5", "--model", str(tmp_path / "sim.json")])
    assert "no pars policy at load factor 1.5" in capsys.readouterr().err


def test_versus_pairs_traces_both_sets_replayed(tmp_path, capsys):
    """This set: trace s0 at 0.6, s1 at 0.8, s2 at 0.5. The other: s0 at 0.4, s1 at 0.5 (no s2). Paired on
    s0 and s1: differences +0.2 and +0.3, mean +0.25; s2 is left out of the pairing, not of the by-trace pool."""
    def on_trace(r: dict, seed: int) -> dict:
        r["trace"] = {"seed": seed}
        for run in r["runs"]:
            run["trace_sha"] = f"sha{seed}"
        return r

    def write(name: str, seed: int, pars: float) -> str:
        r = on_trace(report(3.0, 2.0, {"fcfs": [20.0], "oracle": [10.0], "pars@1000": [20.0 - 10.0 * pars]}), seed)
        (tmp_path / name).write_text(json.dumps(r))
        return str(tmp_path / name)

    these = [write("a0.json", 0, 0.6), write("a1.json", 1, 0.8), write("a2.json", 2, 0.5)]
    those = [write("b0.json", 0, 0.4), write("b1.json", 1, 0.5)]
    out = tmp_path / "pool.json"
    assert pool.main([*these, "--load-factor", "2", "--versus", *those, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    paired = result["versus"]["by_policy"]["pars@1000"]
    assert paired["traces"] == 2
    assert {r["trace"]: r["difference"] for r in paired["per_trace"]} == {
        "seed 0 (sha0)": pytest.approx(0.2), "seed 1 (sha1)": pytest.approx(0.3)}
    assert paired["mean_difference"] == pytest.approx(0.25) and paired["mean_versus"] == pytest.approx(0.45)
    assert paired["t_ci"][0] < 0.25 < paired["t_ci"][1]
    assert result["by_trace"]["pars@1000"]["traces"] == 3
    assert "difference +0.25" in capsys.readouterr().out


def test_difference_pairs_two_policies_of_the_same_runs_by_trace(tmp_path, capsys):
    """Two rankers run interleaved on traces s0 (x 0.6, y 0.8 over two repeats: 0.7 and 0.9, means 0.65 and
    0.85) and s1 (x 0.5, y 0.4): y - x is +0.2 on s0 and -0.1 on s1, mean +0.05."""
    def write(name: str, seed: int, x: list[float], y: list[float]) -> str:
        r = report(3.0, 2.0, {"fcfs": [20.0] * len(x), "oracle": [10.0] * len(x),
                              "pars[x]@1000": [20.0 - 10.0 * v for v in x],
                              "pars[y]@1000": [20.0 - 10.0 * v for v in y]})
        r["trace"] = {"seed": seed}
        for run in r["runs"]:
            run["trace_sha"] = f"sha{seed}"
        (tmp_path / name).write_text(json.dumps(r))
        return str(tmp_path / name)

    paths = [write("s0.json", 0, [0.6, 0.7], [0.8, 0.9]), write("s1.json", 1, [0.5], [0.4])]
    out = tmp_path / "pool.json"
    assert pool.main([*paths, "--load-factor", "2", "--difference", "pars[x]@1000", "pars[y]@1000",
                      "--out", str(out)]) == 0
    diff = json.loads(out.read_text())["differences"]["pars[y]@1000 - pars[x]@1000"]
    assert {r["trace"]: r["difference"] for r in diff["per_trace"]} == {
        "seed 0 (sha0)": pytest.approx(0.2), "seed 1 (sha1)": pytest.approx(-0.1)}
    assert diff["mean_difference"] == pytest.approx(0.05) and diff["mean_versus"] == pytest.approx(0.575)
    # equal oracle gains in every repeat: the traces' ratios of sums differ as their means do
    assert diff["ratio_of_sums"]["mean_difference"] == pytest.approx(0.05)
    assert "difference +0.05" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        pool.main([*paths, "--load-factor", "2", "--difference", "pars[x]@1000", "pars[z]@1000"])


def test_versus_load_factor_pairs_one_load_against_another_on_the_same_traces(tmp_path, capsys):
    """Each experiment ran two loads: trace s0 recovers 0.7 at load 1.5 and 0.5 at load 2, trace s1 0.6 and
    0.6. Load 1.5 minus load 2, paired by trace: +0.2 and 0.0, mean +0.1."""
    def write(name: str, seed: int, at_15: float, at_2: float) -> str:
        runs = [{"rate": rate, "policy": policy, "repeat": 0, "trace_sha": f"sha{seed}",
                 "summary": {"latency_s": {"mean": mean}, "makespan_s": 3.0 * mean, "output_tokens_per_s": 100.0}}
                for rate, pars in ((3.0, at_15), (4.0, at_2))
                for policy, mean in (("fcfs", 20.0), ("oracle", 10.0), ("pars@1000", 20.0 - 10.0 * pars))]
        r = {"note": "synthetic", "capacity": {"load_factors": {"3": 1.5, "4": 2.0}}, "runs": runs,
             "trace": {"seed": seed}}
        (tmp_path / name).write_text(json.dumps(r))
        return str(tmp_path / name)

    paths = [write("s0.json", 0, 0.7, 0.5), write("s1.json", 1, 0.6, 0.6)]
    out = tmp_path / "pool.json"
    assert pool.main([*paths, "--load-factor", "1.5", "--versus", *paths, "--versus-load-factor", "2",
                      "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["load_factor"] == 1.5 and result["versus"]["load_factor"] == 2.0
    paired = result["versus"]["by_policy"]["pars@1000"]
    assert {r["trace"]: r["difference"] for r in paired["per_trace"]} == {
        "seed 0 (sha0)": pytest.approx(0.2), "seed 1 (sha1)": pytest.approx(0.0)}
    assert paired["mean_this"] == pytest.approx(0.65) and paired["mean_versus"] == pytest.approx(0.55)
    assert "difference +0.10" in capsys.readouterr().out
    # without --versus there is nothing to read at the other load
    with pytest.raises(SystemExit):
        pool.main([*paths, "--load-factor", "1.5", "--versus-load-factor", "2"])
    assert "--versus-load-factor needs --versus" in capsys.readouterr().err


def test_skip_fallback_runs_leaves_out_the_runs_whose_predictor_failed(tmp_path, capsys):
    """pars@1000 recovers 0.6 in repeat 0 and 0.1 in repeat 1, where 45 requests fell back to the neutral
    priority. The full pool counts both (mean 0.35); --skip-fallback-runs only repeat 0, and says which run
    it left out."""
    r = report(3.0, 2.0, {"fcfs": [20.0, 20.0], "oracle": [10.0, 10.0], "pars@1000": [14.0, 19.0]})
    for run in r["runs"]:
        if run["policy"] == "pars@1000":
            run["fallbacks"] = 45 if run["repeat"] == 1 else 0
    (tmp_path / "a.json").write_text(json.dumps(r))
    out = tmp_path / "pool.json"
    assert pool.main([str(tmp_path / "a.json"), "--load-factor", "2", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["pooled"]["pars@1000"]["per_repeat"] == pytest.approx([0.6, 0.1])
    assert pool.main([str(tmp_path / "a.json"), "--load-factor", "2", "--skip-fallback-runs", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["pooled"]["pars@1000"]["per_repeat"] == pytest.approx([0.6])
    assert result["skip_fallback_runs"] is True
    assert result["experiments"][0]["skipped_for_fallbacks"] == [{"policy": "pars@1000", "repeat": 1, "fallbacks": 45}]
    capsys.readouterr()
