"""experiments/loss_ablation without real training runs: the grid and each cell's trainer arguments, the paired
bootstrap against a direct computation, the tokens unit's recount, the scheduler model's recovery, and a tiny
ablation end to end (the trainer run in this process on the tiny BERT, a few steps) with its --report-only rebuild,
its resume, and the flags' one-line errors."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys

import numpy as np
import pytest

from experiments.loss_ablation import cli, data, evaluate, grid, runs, schedule
from experiments.loss_ablation.grid import REFERENCE, Cell
from pars.eval.rank_metrics import kendall_tau, length_weighted_tau

# ---- the grid --------------------------------------------------------------------------------------------------


def test_default_grid_reference_and_where_delta_applies():
    from pars.model import precision
    from pars.model.ranker import POOLINGS
    from pars.model.truncation import TRUNCATIONS
    from pars.train.losses import LOSSES, PAIR_LOSSES

    assert (grid.LOSSES, grid.PAIR_LOSSES) == (LOSSES, PAIR_LOSSES)  # spelled out for a torch-free --help
    assert (cli.POOLINGS, cli.TRUNCATIONS, cli.PRECISIONS) == (POOLINGS, TRUNCATIONS, precision.CHOICES)
    cells = grid.default_cells()
    assert REFERENCE == Cell("in-batch", "margin", 0.2) and REFERENCE in cells
    assert len(cells) == 5 + 3 + 5 and len(set(cells)) == len(cells)
    assert [c.delta for c in cells if c.family == "in-batch" and c.loss == "margin"] == [0, 0.1, 0.2, 0.3, 0.5]
    assert {c.loss: c.delta for c in cells if c.loss != "margin"} == {"listmle": None, "pointwise": None,
                                                                       "classification": None}
    assert {c.loss for c in cells if c.family == "pair-files"} == {"margin"}
    assert [c.delta for c in cells if c.family == "pair-files"] == [0, 0.1, 0.2, 0.3, 0.5]
    assert REFERENCE.name == "in-batch margin δ=0.2" and REFERENCE.spec == "in-batch:margin:0.2"
    assert Cell("pair-files", "margin", 0.0).slug == "pair-files_margin_d0"
    # --cells: items, families, the reference always added, grid order, each once
    assert grid.parse_cells("pair-files:margin:0,in-batch:listmle,in-batch:listmle", [0.2]) == [
        REFERENCE, Cell("in-batch", "listmle"), Cell("pair-files", "margin", 0.0)]
    assert grid.parse_cells("pair-files", [0.0, 0.3]) == [REFERENCE, Cell("pair-files", "margin", 0.0),
                                                           Cell("pair-files", "margin", 0.3)]
    assert grid.parse_cells("all", list(grid.DEFAULT_DELTAS)) == cells
    for spec, message in (("in-batch:hinge", "unknown loss 'hinge'"), ("batch:margin:0.2", "unknown family"),
                          ("in-batch:listmle:0.2", "δ does not apply to listmle"),
                          ("in-batch:margin", "margin needs its δ"), ("pair-files:pointwise", "pairwise loss only"),
                          ("in-batch:margin:1.5", "must be in [0, 1)"), ("in-batch:margin:x", "not a number")):
        with pytest.raises(ValueError, match=re.escape(message)):
            grid.parse_cells(spec, [0.2])
    assert grid.parse_deltas("0.5,0,0.2,0") == [0.0, 0.2, 0.5]
    assert grid.pair_file_deltas([REFERENCE, Cell("pair-files", "margin", 0.4)], [0.0]) == [0.0, 0.2, 0.4]


def flag(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


def test_each_cell_maps_to_the_trainers_arguments(tmp_path):
    from pars.train.args import build_parser, check_args

    s = grid.TrainSettings("enc", budget_minutes=2.5, extra=("--max-steps=3",))
    unit = tmp_path / "chars"
    margin = grid.trainer_argv(Cell("in-batch", "margin", 0.3), unit, tmp_path / "r", 7, s)
    assert flag(margin, "--pairing") == "in-batch" and flag(margin, "--similarity-threshold") == "0.3"
    assert flag(margin, "--train-data-file") == str(unit / "train_data.json") and flag(margin, "--loss") == "margin"
    listmle = grid.trainer_argv(Cell("in-batch", "listmle"), unit, tmp_path / "r", 7, s)
    assert flag(listmle, "--pairing") == "in-batch" and flag(listmle, "--loss") == "listmle"
    assert "--similarity-threshold" not in listmle
    files = grid.trainer_argv(Cell("pair-files", "margin", 0.0), unit, tmp_path / "r", 7, s)
    assert flag(files, "--pairing") == "pairs" and flag(files, "--train-file") == str(
        unit / "train_pairs_length_diff_0.0.json") and "--similarity-threshold" not in files
    for argv in (margin, listmle, files):  # the same validation, budget and settings for every cell
        assert flag(argv, "--val-file") == str(unit / "val_pairs_length_diff_0.2.json")
        assert flag(argv, "--max-train-minutes") == "2.5" and flag(argv, "--seed") == "7"
        assert flag(argv, "--num-epochs") == "100" and flag(argv, "--batch-size") == "64"
        assert flag(argv, "--pooling") == "mean" and flag(argv, "--truncation") == "middle"
        assert flag(argv, "--mixed-precision") == "auto" and argv[-1] == "--max-steps=3"
        args = build_parser().parse_args(argv)  # the trainer takes them as they are
        check_args(args)
        assert args.max_steps == 3 and args.learning_rate == 5e-5 and args.warmup_ratio == 0.0


# ---- metrics and the paired bootstrap ---------------------------------------------------------------------------


def test_fast_weighted_tau_equals_the_metric():
    rng = np.random.default_rng(3)
    for n in (2, 7, 50):
        s = rng.integers(0, 5, size=n).astype(float)  # many ties
        y = rng.integers(1, 30, size=n).astype(float)
        for cap in (None, 12.0):
            assert evaluate.weighted_tau(s, y, cap) == pytest.approx(length_weighted_tau(s, y, cap=cap), abs=1e-12)


def val_set(lengths, pairs=None) -> evaluate.ValSet:
    lengths = np.asarray(lengths, dtype=float)
    n = len(lengths)
    pairs = pairs or [(i, (i + 3) % n) for i in range(n) if lengths[i] != lengths[(i + 3) % n]]
    a, b = (np.asarray(x) for x in zip(*pairs, strict=True))
    return evaluate.ValSet([f"p{i}" for i in range(n)], [str(i) for i in range(n)], lengths,
                           float(np.percentile(lengths, 98)), a, b, (lengths[a] > lengths[b]).astype(np.int64), "v")


def test_paired_bootstrap_against_a_direct_computation():
    rng = np.random.default_rng(0)
    y = rng.integers(1, 200, size=40).astype(float)
    val = val_set(y)
    good = [y + rng.normal(0, 30, 40) for _ in range(2)]  # two seeds of a decent ranker
    noise = [rng.normal(0, 1, 40) for _ in range(3)]  # three seeds of noise
    draws, seed = 200, 5
    points = {k: [evaluate.point(s, val) for s in v] for k, v in (("good", good), ("noise", noise))}
    boots = {k: [evaluate.resample_draws(s, val, draws, seed) for s in v]
             for k, v in (("good", good), ("noise", noise))}
    # a cell's value is the mean over its seeds of each seed's metric
    summary = evaluate.seeds_summary(points["good"])
    assert summary["kendall_tau"]["mean"] == pytest.approx(np.mean([kendall_tau(s, y) for s in good]))
    assert summary["kendall_tau"]["sd"] == pytest.approx(np.std([kendall_tau(s, y) for s in good], ddof=1))
    diff = evaluate.difference(points["good"], boots["good"], points["noise"], boots["noise"])
    # directly: the same resamples of rows for both cells, each resample's value the mean over seeds
    rows = np.random.default_rng(seed)
    direct = []
    for _ in range(draws):
        i = rows.integers(40, size=40)
        direct.append(np.mean([kendall_tau(s[i], y[i]) for s in good]) - np.mean([kendall_tau(s[i], y[i])
                                                                                   for s in noise]))
    assert diff["kendall_tau"]["ci95"] == pytest.approx(list(np.quantile(direct, [0.025, 0.975])))
    assert diff["kendall_tau"]["difference"] == pytest.approx(
        np.mean([kendall_tau(s, y) for s in good]) - np.mean([kendall_tau(s, y) for s in noise]))
    correct = [((s[val.pair_a] > s[val.pair_b]) == val.labels).astype(float) for s in good]
    pairs = np.random.default_rng(seed + 1)
    direct_acc = [np.mean([c[j].mean() for c in correct]) for j in
                  (pairs.integers(len(val.labels), size=len(val.labels)) for _ in range(draws))]
    assert np.mean([d["pairwise_accuracy"] for d in boots["good"]], axis=0) == pytest.approx(direct_acc)
    # scores equal to the lengths against noise: every interval above 0, the claim holds
    exact = [evaluate.point(y, val)]
    exact_boot = [evaluate.resample_draws(y, val, draws, seed)]
    vs_noise = evaluate.difference(exact, exact_boot, points["noise"], boots["noise"])
    for m in evaluate.METRICS:
        assert vs_noise[m]["ci95"][0] > 0 and evaluate.verdict(vs_noise[m]["ci95"]) == "holds"
        assert evaluate.verdict([-v for v in vs_noise[m]["ci95"]][::-1]) == "does not hold"
    # identical cells: a difference of 0 and a degenerate interval
    same = evaluate.difference(points["good"], boots["good"], points["good"], boots["good"])
    for m in evaluate.METRICS:
        assert same[m]["difference"] == 0 and same[m]["ci95"] == [0, 0]
        assert evaluate.verdict(same[m]["ci95"]) == "not settled (interval includes 0)"


def test_seeds_above_pairs_runs_by_seed():
    def p(tau):
        return {"kendall_tau": tau, "length_weighted_tau": tau, "pairwise_accuracy": 0.5}

    a = {0: p(0.40), 1: p(0.30), 2: p(0.50), 7: p(0.9)}  # seed 7: no run of b to compare with
    b = {0: p(0.35), 1: p(0.32), 2: p(0.45), 3: p(0.1)}
    got = evaluate.seeds_above(a, b)
    assert got["kendall_tau"] == [2, 3] and got["pairwise_accuracy"] == [0, 3]  # a tie is not above
    assert evaluate.seeds_above(b, a)["kendall_tau"] == [1, 3]
    assert evaluate.seeds_above(a, {})["kendall_tau"] == [0, 0]


def test_a_difference_is_taken_over_the_seeds_both_cells_have():
    from experiments.loss_ablation.aggregate import RunEval, _difference

    rng = np.random.default_rng(1)
    y = rng.integers(1, 200, size=30).astype(float)
    val = val_set(y)

    def run(seed, noise):
        s = y + rng.normal(0, noise, 30)
        return RunEval(seed, {}, evaluate.point(s, val), evaluate.resample_draws(s, val, 50, 3))

    a = [run(0, 10), run(1, 10)]
    b = [run(0, 40), run(1, 40), run(2, 0)]  # seed 2 of b (a perfect run) has no partner in a
    got = _difference(a, b)["kendall_tau"]
    assert got["seeds"] == [0, 1] and got["seeds_above"][1] == 2
    assert got["difference"] == pytest.approx(np.mean([e.point["kendall_tau"] for e in a])
                                              - np.mean([e.point["kendall_tau"] for e in b[:2]]))
    apart = _difference(a, [run(5, 40)])["kendall_tau"]  # no seed in common: every run of each
    assert apart["seeds"] is None and apart["seeds_above"] == [0, 0]


def test_the_schedule_and_screen_differences_pair_the_same_seeds():
    from experiments.loss_ablation.aggregate import RunEval, cell_row

    y = np.arange(1.0, 31.0)
    val = val_set(y)
    point, draws = evaluate.point(y, val), evaluate.resample_draws(y, val, 20, 0)

    def run(seed, tau, rec):
        return RunEval(seed, {}, point, draws, recovery={"60": {"1.0": [rec, rec + 0.1]}},
                       trace_taus={"t1": tau, "t2": tau + 0.1})

    cell = [run(0, 0.5, 0.4), run(1, 0.7, 0.6)]
    ref = [run(0, 0.4, 0.3), run(1, 0.4, 0.3), run(2, -0.8, -0.9)]  # seed 2: no partner in the cell
    row = cell_row(Cell("in-batch", "listmle"), cell, ref)
    assert row["trace_tau"]["mean"] == pytest.approx(0.65)  # the cell's own figure: all its runs
    assert row["trace_tau"]["minus_reference"]["mean"] == pytest.approx(0.2)  # (0.6 - 0.4), seeds 0 and 1
    assert row["recovery"]["60"]["mean"] == pytest.approx(0.55)
    assert row["recovery"]["60"]["minus_reference"]["mean"] == pytest.approx(0.2)
    assert cell_row(REFERENCE, ref, ref)["trace_tau"].get("minus_reference") is None


def test_scores_are_cached_beside_the_run(tmp_path):
    val = val_set([5, 50, 500, 7])
    (tmp_path / "best_model.pt").write_bytes(b"weights")
    scored = []

    class Scorer:
        def score_many(self, prompts, batch_size=64):
            scored.append(list(prompts))
            return [float(len(p)) for p in prompts]

    first = evaluate.score_run(tmp_path, "best", val, ["p1", "new prompt"], scorer_factory=lambda c: Scorer())
    assert first["val"] == [2.0] * 4 and first["extra"] == {"new prompt": 10.0}
    assert scored == [val.prompts, ["new prompt"]]  # a val prompt among the trace prompts is not scored twice
    again = evaluate.score_run(tmp_path, "best", val, ["new prompt", "p2"], scorer_factory=lambda c: 1 / 0)
    assert again == first  # from scores_best.json: no scorer made
    evaluate.score_run(tmp_path, "best", val, ["third"], scorer_factory=lambda c: Scorer())
    assert scored[-1] == ["third"]  # only what is missing
    (tmp_path / "best_model.pt").write_bytes(b"other weights")  # a new checkpoint: scored afresh
    evaluate.score_run(tmp_path, "best", val, [], scorer_factory=lambda c: Scorer())
    assert scored[-1] == val.prompts


# ---- data and the scheduler model -----------------------------------------------------------------------------


def word_rows(n, seed):
    from tests.conftest import WORDS

    rng = random.Random(seed)
    return [{"task_id": i, "prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))),
             "answer_content": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))),
             "answer_length": 0} for i in range(n)]


def test_tokens_unit_recounts_answers_and_is_reused(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    rows = {"train": word_rows(30, 1), "val": word_rows(12, 2)}
    for r in rows["train"] + rows["val"]:
        r["answer_length"] = len(r["answer_content"])  # characters, as ShareGPT's
    for split, rs in rows.items():
        (tmp_path / f"{split}.json").write_text(json.dumps(rs))
    source = data.Source(tmp_path / "train.json", tmp_path / "val.json")
    said = []
    prepare = lambda: data.prepare_unit("tokens", source, tmp_path / "tokens", [0.0, 0.2], {"train": 2, "val": 3,  # noqa: E731
                                        "seed": 42}, "tiny", lambda: tok, said.append)
    manifest = prepare()
    for split in ("train", "val"):
        got = json.loads((tmp_path / "tokens" / f"{split}_data.json").read_text())
        direct = [len(tok(r["answer_content"], add_special_tokens=False)["input_ids"]) for r in rows[split]]
        assert [r["answer_length"] for r in got] == direct and direct == [len(r["answer_content"].split())
                                                                         for r in rows[split]]
        assert (tmp_path / "tokens" / f"{split}_pairs_length_diff_0.0.json").is_file()
    assert json.loads((tmp_path / "tokens" / "dataset_info.json").read_text())["length_unit"] == "tokens of tiny"
    # the scheduler model's lengths: the val rows' prompt and answer tokens, whichever units are trained
    served = data.prepare_served(tmp_path / "served.json", source, "tiny", lambda: tok, said.append)
    assert served["3"] == [len(tok(rows["val"][3]["prompt"])["input_ids"]), len(rows["val"][3]["answer_content"]
                                                                                .split())]
    assert data.served_lengths(served, "tiny", {"chars": tmp_path / "c"}) == (served, "answer tokens of tiny (the "
                                                                                     "served model's)")
    assert data.prepare_served(tmp_path / "served.json", source, "tiny", lambda: 1 / 0) == served  # reused
    assert prepare()["fingerprint"] == manifest["fingerprint"] and said[-1].startswith("data tokens: reusing")


def test_recovery_follows_the_scores_quality():
    rng = random.Random(0)
    served = {str(i): [5, rng.choice([3, 8, 40, 200, 600])] for i in range(60)}
    s = schedule.SchedSettings(num_requests=20, traces=3, load_factors=(2.0,), windows=(0.0, 1000.0), max_num_seqs=2)
    traces = schedule.draw_traces(served, set(served) - {"0"}, s)
    assert [t.ids for t in traces] == [t.ids for t in schedule.draw_traces(served, set(served) - {"0"}, s)]
    assert all("0" not in t.ids and len(t.ids) == 20 for t in traces)
    base = schedule.baselines(traces, s)
    exact = schedule.recovery({i: float(a) for i, (_, a) in served.items()}, traces, base, s)
    reverse = schedule.recovery({i: -float(a) for i, (_, a) in served.items()}, traces, base, s)
    # W = 1000 s: by the scores' quantile alone; the true lengths' order is the oracle's
    assert exact["1000"]["2"] == pytest.approx([1.0] * 3) and max(reverse["1000"]["2"]) < 0
    assert exact["0"]["2"] == pytest.approx([0.0] * 3)  # W = 0: arrival order, FCFS's
    with pytest.raises(SystemExit, match="only 19 usable"):
        schedule.draw_traces(served, set(list(served)[:19]), s)


def test_trace_reports_of_both_kinds_and_one_trace_counted_once(tmp_path):
    from experiments.loss_ablation import screen

    rows = [{"task_id": i, "prompt": f"prompt {i}", "answer_length": 10 * i} for i in range(6)]
    e2e = tmp_path / "vllm_e2e.json"
    e2e.write_text(json.dumps({"trace": {"seed": 0, "ids": ["1", "2", "3"], "max_tokens": [10, 20, 30]}}))
    client = tmp_path / "client"
    client.mkdir()
    for seed, ids in ((0, [1, 2, 3]), (1, [5, 4])):
        lines = [json.dumps({"prompt": f"prompt {i}", "output_tokens": 10 * i}) for i in ids]
        (client / f"seed{seed}.jsonl").write_text("\n".join(lines))
    bench = tmp_path / "vllm_bench.json"  # its datasets named where they were written: found beside it
    bench.write_text(json.dumps({"per_seed": [{"seed": s, "dataset": f"/elsewhere/client/seed{s}.jsonl"}
                                              for s in (0, 1)]}))
    traces = screen.read_trace_reports([e2e, bench], rows)  # bench's seed 0 is e2e's trace: counted once
    assert [t["prompts"] for t in traces.values()] == [["prompt 1", "prompt 2", "prompt 3"], ["prompt 5", "prompt 4"]]
    assert [t["file"] for t in traces.values()] == [str(e2e), str(bench)]
    taus = screen.run_taus({f"prompt {i}": float(i) for i in range(6)}, traces)
    assert list(taus.values()) == [1.0, 1.0]
    (tmp_path / "other.json").write_text(json.dumps({"runs": []}))
    with pytest.raises(ValueError, match="not a vllm_e2e.py or vllm_bench.py report"):
        screen.read_trace_reports([tmp_path / "other.json"], rows)
    e2e.write_text(json.dumps({"trace": {"ids": ["9"], "max_tokens": [1]}}))
    with pytest.raises(ValueError, match="row '9' of its trace is not in --val-data"):
        screen.read_trace_reports([e2e], rows)


# ---- the ablation end to end ------------------------------------------------------------------------------------


def in_process(calls):
    def launch(argv, env, log_path):
        from pars.train import loop

        calls.append(list(argv))
        assert env["OMP_NUM_THREADS"] == "1"
        return loop.main(argv)

    return launch


def test_tiny_ablation_end_to_end_report_only_and_resume(tmp_path, tiny_model_dir, tiny_data, monkeypatch, capsys):
    val = json.loads((tiny_data / "val_data.json").read_text())
    report = tmp_path / "vllm_e2e.json"  # a recorded real-vLLM trace: 8 val rows served at their lengths
    report.write_text(json.dumps({"trace": {"ids": [r["task_id"] for r in val[:8]],
                                            "max_tokens": [r["answer_length"] for r in val[:8]]}, "runs": []}))
    out = tmp_path / "run" / "loss_ablation.json"
    argv = ["--train-data", str(tiny_data / "train_data.json"), "--val-data", str(tiny_data / "val_data.json"),
            "--units", "chars", "--model-name", str(tiny_model_dir),
            "--cells", "in-batch:listmle,pair-files:margin:0.2",
            "--deltas", "0.2", "--seeds", "0,1", "--budget-minutes", "1", "--threads", "1", "--batch-size", "16",
            "--trainer-arg=--max-steps=2", "--train-pairs-per-prompt", "2", "--val-pairs-per-prompt", "4",
            "--bootstrap", "50", "--num-requests", "8", "--traces", "2", "--load-factors", "2", "--windows",
            "5,1000", "--max-num-seqs", "2", "--trace-reports", str(report), "--out", str(out)]
    calls = []
    monkeypatch.setattr(runs, "launch", in_process(calls))
    assert cli.main(argv) == 0
    assert len(calls) == 3 * 2 and all(flag(c, "--max-train-minutes") == "1" for c in calls)
    result = json.loads(out.read_text())
    work = tmp_path / "run" / "loss_ablation_work"
    assert result["paths"]["work"] == str(work)
    assert (work / "data" / "chars" / "train_pairs_length_diff_0.2.json").is_file()
    assert result["budget"]["minutes_per_run"] == 1 and result["budget"]["threads"] == 1
    assert result["git_commit"] and "experiments.loss_ablation" in result["command"]
    assert len(result["runs"]) == 6 and all(r["steps"] == 2 for r in result["runs"])
    cells = result["units"]["chars"]["cells"]
    assert [c["cell"] for c in cells] == ["in-batch margin δ=0.2", "in-batch listmle", "pair-files margin δ=0.2"]
    ref, listmle = cells[0], cells[1]
    assert ref["reference"] and ref["minus_reference"] is None and listmle["seeds"] == [0, 1]
    d = listmle["minus_reference"]["kendall_tau"]
    assert d["difference"] == pytest.approx(listmle["metrics"]["kendall_tau"]["mean"] - ref["metrics"]["kendall_tau"]
                                            ["mean"]) and d["ci95"][0] <= d["difference"] <= d["ci95"][1]
    per_seed = listmle["metrics"]["kendall_tau"]["per_seed"], ref["metrics"]["kendall_tau"]["per_seed"]
    assert d["seeds_above"] == [sum(x > y for x, y in zip(*per_seed, strict=True)), 2]
    assert set(listmle["recovery"]) == {"5", "1000"} and listmle["trace_tau"]["traces"] == 1
    rec = listmle["recovery"]["1000"]
    assert rec["traces"] == 2 and rec["mean"] is not None and rec["minus_reference"]["traces"] == 2
    assert result["scheduling"]["settings"]["max_num_seqs"] == 2 and len(result["scheduling"]["traces"]) == 2
    claims = {c["claim"]: c for c in result["units"]["chars"]["claims"]}
    assert "kendall_tau" in claims["pairwise margin (in-batch, δ=0.2) beats listwise (listmle)"]["metrics"]
    assert "missing" in claims["δ = 0.2 beats δ = 0, in-batch margin"]
    md = out.with_suffix(".md").read_text()
    assert "| cell | seeds | steps | tau (sd) | Δ tau vs ref [95% CI] | weighted tau (sd) | Δ [95% CI] | " \
           "accuracy (sd) | Δ [95% CI] | recovery W=1000 s [t 95%] | Δ recovery [t 95%] | trace tau [t 95%] |" in md
    row = next(line for line in md.splitlines() if line.startswith("| in-batch listmle | 2 | 2 |"))
    assert row.count("|") == 13 and "[" in row.split("|")[5] and f"↑{d['seeds_above'][0]}/2" in row.split("|")[5]
    assert "pairwise margin (in-batch, δ=0.2) beats listwise (listmle): Kendall tau " in md
    assert out.with_suffix(".png").stat().st_size > 1000
    assert (work / "runs" / "chars" / "in-batch_listmle" / "seed1" / "scores_best.json").is_file()
    # checkpoints deleted once scored (no --keep-checkpoints): the report below needs only the cached scores
    assert not list((work / "runs").rglob("*_model.pt")) and len(list((work / "runs").rglob("metrics.json"))) == 6

    def refuse(*a, **k):
        raise AssertionError("a trainer was started")

    monkeypatch.setattr(runs, "launch", refuse)
    capsys.readouterr()
    assert cli.main([*argv, "--report-only"]) == 0
    assert "no training" in capsys.readouterr().out
    again = out.with_suffix(".md").read_text()
    assert again[again.index("## Unit"):] == md[md.index("## Unit"):]
    assert cli.main(argv) == 0  # without --report-only every run is finished: resumed, none trained
    assert "runs: 6 in the grid, 6 finished already, 0 to train" in capsys.readouterr().out
    assert json.loads(out.read_text())["runs_done"] == {"trained": 0, "skipped": 6}


def test_a_failed_run_stops_the_ablation_in_one_line(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, cwd, env, stdout, stderr, check):
        seen.update(cmd=cmd, env=env)
        stdout.write("Traceback ...\nerror: something broke\n")
        return subprocess.CompletedProcess(cmd, 2)

    monkeypatch.setattr(runs.subprocess, "run", fake_run)
    plan = runs.plan({"chars": tmp_path / "d"}, [REFERENCE], [0], tmp_path / "runs", grid.TrainSettings("enc"),
                     {"chars": "x"}, threads=3)
    with pytest.raises(SystemExit, match="the trainer exited 2; see .*train.log: error: something broke"):
        runs.execute(plan, 3, 2.0, say=lambda s: None)
    assert seen["cmd"][:2] == [sys.executable, str(runs.TRAIN_SCRIPT)] and seen["cmd"][2:] == plan[0].argv
    assert seen["env"]["OMP_NUM_THREADS"] == "3" and not plan[0].finished()


def call(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    return exc.value.code, capsys.readouterr()


def test_help_and_one_line_errors(tmp_path, capsys, tiny_data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = call(["--help"], capsys)
    assert code == 0 and "--budget-minutes" in out.out and "--report-only" in out.out and "(default: 1000)" in out.out
    assert list(tmp_path.iterdir()) == []  # nothing done
    base = ["--train-data", str(tiny_data / "train_data.json"), "--val-data", str(tiny_data / "val_data.json"),
            "--out", str(tmp_path / "o.json")]
    for extra, message in ((["--budget-minutes", "0"], "--budget-minutes must be > 0"),
                           (["--cells", "in-batch:hinge"], "unknown loss 'hinge'"),
                           (["--train-data", str(tmp_path / "no.json")], "no such file"),
                           (["--trace-reports", str(tmp_path / "no.json")], "no such file"),
                           (["--seeds", "1,1"], "--seeds must be"), (["--deltas", "0.2,1"], "must be in [0, 1)"),
                           (["--units", "chars,words"], "--units must list"), (["--bootstrap", "0"], "at least 1"),
                           (["--units", "tokens"], "no unit left")):
        code, out = call(base + extra, capsys)
        assert code == 2 and message in out.err and len(out.err.strip().splitlines()) == 1, out.err
    assert list(tmp_path.iterdir()) == []


def test_the_default_work_dir_is_git_ignored_before_it_exists():
    from experiments.lib.paths import ROOT

    runs_dir = ROOT / "experiments" / "runs" / "2099-01-01_never_made"
    assert not runs_dir.exists()
    assert not cli.unignored_in_git(runs_dir / "loss_ablation_work")  # .gitignore: experiments/runs/**/*_work/
    assert cli.unignored_in_git(runs_dir / "elsewhere")
