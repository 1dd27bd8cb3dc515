"""experiments/trace_tau.py: rankers' tau on the vLLM experiments' traces, computed offline."""

from __future__ import annotations

import json

import pytest
from scipy.stats import kendalltau
from transformers import AutoTokenizer

from experiments import trace_tau
from pars.eval.rank_metrics import length_weighted_tau
from pars.model.checkpoint import load_ranker
from pars.model.scoring import PromptScorer


def write_report(path, ids, served, seed):
    report = {"trace": {"seed": seed, "ids": ids, "max_tokens": served},
              "runs": [{"trace_sha": f"sha{seed}", "policy": "fcfs"}]}
    path.write_text(json.dumps(report))
    return str(path)


def test_taus_are_those_of_the_rankers_scores_paired_by_trace(tiny_model_dir, checkpoint, tiny_data, tmp_path,
                                                              capsys):
    rows = json.loads((tiny_data / "val_data.json").read_text())
    a = write_report(tmp_path / "a.json", [str(r["task_id"]) for r in rows[:10]],
                     [r["answer_length"] for r in rows[:10]], 0)
    b = write_report(tmp_path / "b.json", [str(r["task_id"]) for r in rows[5:15]],
                     [min(r["answer_length"], 100) for r in rows[5:15]], 1)
    again = write_report(tmp_path / "a2.json", [str(r["task_id"]) for r in rows[:10]],
                         [r["answer_length"] for r in rows[:10]], 0)  # the same trace: counted once
    out = tmp_path / "tau.json"
    assert trace_tau.main([a, b, again, "--data", str(tiny_data / "val_data.json"), "--ranker-name",
                           str(tiny_model_dir), "--ranker-path", str(checkpoint), str(checkpoint),
                           "--ranker-pooling", "pooler", "mean", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["per_trace"]) == 2
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    mean = PromptScorer(load_ranker(str(tiny_model_dir), checkpoint, "mean"), tokenizer, device="cpu")
    want = kendalltau(mean.score([r["prompt"] for r in rows[5:15]]),
                      [min(r["answer_length"], 100) for r in rows[5:15]]).statistic
    first, second = result["rankers"]
    assert result["per_trace"]["seed 1 (sha1)"][second] == pytest.approx(want)
    want_weighted = length_weighted_tau(mean.score([r["prompt"] for r in rows[5:15]]),
                                        [min(r["answer_length"], 100) for r in rows[5:15]])
    assert result["per_trace_weighted"]["seed 1 (sha1)"][second] == pytest.approx(want_weighted)
    assert result["summary_weighted"][second]["minus_first"]["traces"] == 2
    diffs = [t[second] - t[first] for t in result["per_trace"].values()]
    summary = result["summary"][second]["minus_first"]
    assert summary["mean"] == pytest.approx(sum(diffs) / 2) and summary["traces"] == 2
    assert out.with_suffix(".png").stat().st_size > 0
    assert "higher on" in capsys.readouterr().out


def test_rows_missing_from_data_are_a_one_line_error(tiny_data, tmp_path, capsys):
    report = write_report(tmp_path / "a.json", ["no-such-row"], [10], 0)
    with pytest.raises(SystemExit) as exc:
        trace_tau.main([report, "--data", str(tiny_data / "val_data.json"), "--ranker-path", "x.pt"])
    assert exc.value.code == 2 and "no-such-row" in capsys.readouterr().err


def test_recovery_fit_is_the_least_squares_line():
    # recovery = 0.1 + 1.0 x tau exactly, on three experiments (two policies in one)
    pool = {"experiments": [
        {"priority_tau": {"pars@1000": {"median": 0.3}}, "recovered": {"pars@1000": {"mean": 0.4}}},
        {"priority_tau": {"pars@1000": {"median": 0.5}}, "recovered": {"pars@1000": {"mean": 0.6}}},
        {"priority_tau": {"pars[a]@1000": {"median": 0.4}, "pars[b]@1000": {"median": 0.2}},
         "recovered": {"pars[a]@1000": {"mean": 0.5}, "pars[b]@1000": {"mean": 0.3}, "prompt-length": {"mean": 0.1}}},
    ]}
    fit = trace_tau.recovery_fit(pool)
    assert fit["slope"] == pytest.approx(1.0) and fit["intercept"] == pytest.approx(0.1)
    assert fit["experiments"] == 4 and fit["tau_for_0.6"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        trace_tau.recovery_fit({"experiments": pool["experiments"][:1]})
    with pytest.raises(ValueError, match="rerun e2e_pool.py"):  # a pool JSON written before "weighted"
        trace_tau.recovery_fit(pool, "weighted")
    for e in pool["experiments"]:  # recovery = 2 x weighted tau
        for name, row in e["priority_tau"].items():
            row["weighted"] = e["recovered"][name]["mean"] / 2
    fit = trace_tau.recovery_fit(pool, "weighted")
    assert fit["slope"] == pytest.approx(2.0) and fit["intercept"] == pytest.approx(0.0, abs=1e-9)


def test_tfidf_and_ensembles_are_screened_beside_the_checkpoints(tiny_model_dir, checkpoint, tiny_data, tmp_path):
    """--tfidf-train adds the TF-IDF + ridge baseline; --ensemble the mean of the members' per-trace quantiles,
    as a gateway averaging their score quantiles would order the trace."""
    from pars.eval.baselines import TfidfRidgeBaseline

    rows = json.loads((tiny_data / "val_data.json").read_text())
    train = json.loads((tiny_data / "train_data.json").read_text())
    trace = rows[:12]
    served = [r["answer_length"] for r in trace]
    report = write_report(tmp_path / "a.json", [str(r["task_id"]) for r in trace], served, 0)
    out = tmp_path / "ens.json"
    assert trace_tau.main([report, "--data", str(tiny_data / "val_data.json"), "--ranker-name", str(tiny_model_dir),
                           "--ranker-path", str(checkpoint), "--tfidf-train", str(tiny_data / "train_data.json"),
                           "--ensemble", "all", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    first, tfidf, ens = result["rankers"]
    assert tfidf == "tfidf_ridge" and result["ensembles"] == {ens: [first, "tfidf_ridge"]}
    prompts = [r["prompt"] for r in trace]
    baseline = TfidfRidgeBaseline().fit([r["prompt"] for r in train], [r["answer_length"] for r in train])
    key = "seed 0 (sha0)"
    assert result["per_trace"][key][tfidf] == pytest.approx(kendalltau(baseline.score(prompts), served).statistic)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    ranker = PromptScorer(load_ranker(str(tiny_model_dir), checkpoint, "pooler"), tokenizer, device="cpu")
    mean_q = (trace_tau.quantiles(ranker.score(prompts)) + trace_tau.quantiles(baseline.score(prompts))) / 2
    assert result["per_trace"][key][ens] == pytest.approx(kendalltau(mean_q, served).statistic)
    assert result["per_trace_weighted"][key][ens] == pytest.approx(length_weighted_tau(mean_q, served))


def test_quantiles_are_mid_ranks_and_bad_ensembles_fail_before_scoring(tiny_data, tmp_path, capsys):
    assert list(trace_tau.quantiles([10.0, 30.0, 20.0, 20.0])) == [0.125, 0.875, 0.5, 0.5]
    assert trace_tau.parse_ensembles(["a,b"], ["a", "b", "c"]) == {"ensemble(a+b)": ["a", "b"]}
    for spec in ("a,zz", "a"):
        with pytest.raises(ValueError, match="--ensemble"):
            trace_tau.parse_ensembles([spec], ["a", "b"])
    rows = json.loads((tiny_data / "val_data.json").read_text())
    report = write_report(tmp_path / "a.json", [str(rows[0]["task_id"])], [10], 0)
    with pytest.raises(SystemExit) as exc:  # the checkpoint does not exist: the error comes first
        trace_tau.main([report, "--data", str(tiny_data / "val_data.json"), "--ranker-path", "x/no.pt",
                        "--ensemble", "no,such"])
    assert exc.value.code == 2 and "--ensemble" in capsys.readouterr().err


def test_bad_tfidf_train_rows_fail_before_the_encoders_score(tiny_data, tmp_path, capsys):
    rows = json.loads((tiny_data / "val_data.json").read_text())
    report = write_report(tmp_path / "a.json", [str(rows[0]["task_id"])], [10], 0)
    bad = tmp_path / "train.json"
    bad.write_text(json.dumps([{"prompt": "no length here"}, {"prompt": "nor here"}]))
    with pytest.raises(SystemExit) as exc:  # the checkpoint does not exist: the TF-IDF error comes first
        trace_tau.main([report, "--data", str(tiny_data / "val_data.json"), "--ranker-path", "x/no.pt",
                        "--tfidf-train", str(bad)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--tfidf-train" in err and "answer_length" in err
