"""The evaluator, baselines and plots end to end on the tiny model and tiny data."""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scipy import stats

from pars.common.errors import PARSError, run_cli
from pars.data.pairs import make_pairs
from pars.eval import evaluate
from pars.eval.baselines import TfidfRidgeBaseline, prompt_char_lengths, prompt_token_lengths
from pars.model.checkpoint import load_ranker, save_checkpoint
from pars.model.ranker import PairwiseRanker, load_tokenizer
from pars.model.scoring import PromptScorer
from pars.train.curves import plot_training_curves

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCORES = ("kendall_tau", "spearman_rho", "pairwise_accuracy")
METRIC_KEYS = {*SCORES, "rows", "pairs", "prompts_scored", "seconds"}


def read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def make_checkpoint(model_dir: Path, out_dir: Path, seed: int) -> Path:
    out_dir.mkdir(parents=True)
    torch.manual_seed(seed)
    save_checkpoint(PairwiseRanker.from_pretrained(str(model_dir)), out_dir / "best_model.pt")
    return out_dir / "best_model.pt"


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir, tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("ckpts")
    return [make_checkpoint(tiny_model_dir, root / name, seed) for name, seed in (("run_a", 0), ("run_b", 1))]


@pytest.fixture(scope="module")
def other_data(tiny_data, tmp_path_factory) -> Path:
    """A second val set: a shuffled subset of the tiny val rows with its own pairs, no train_data.json."""
    out = tmp_path_factory.mktemp("parent") / "other"
    out.mkdir()
    rows = random.Random(5).sample(read(tiny_data / "val_data.json"), 15)
    (out / "val_data.json").write_text(json.dumps(rows), encoding="utf-8")
    pairs = make_pairs(rows, 3, 0.2, 7)
    (out / "val_pairs_length_diff_0.2.json").write_text(json.dumps(pairs), encoding="utf-8")
    return out


def run_main(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert evaluate.main(argv) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def evaluated(tiny_model_dir, tiny_data, other_data, checkpoints, tmp_path_factory):
    """One run: 2 checkpoints x 2 datasets, plots on."""
    out = tmp_path_factory.mktemp("eval") / "eval.json"
    stdout = run_main(["--checkpoint", *map(str, checkpoints), "--model-name", str(tiny_model_dir),
                       "--val-data", str(tiny_data / "val_data.json"), str(other_data / "val_data.json"),
                       "--batch-size", "8", "--device", "cpu", "--output", str(out)])
    return out, read(out), stdout


def test_report_has_inputs_results_matrix_and_timing(evaluated, tiny_data, other_data):
    _, report, _ = evaluated
    assert {"inputs", "results", "matrix", "plots", "notes", "timing"} <= report.keys()
    assert [c["name"] for c in report["inputs"]["checkpoints"]] == ["run_a", "run_b"]
    assert [d["name"] for d in report["inputs"]["datasets"]] == [tiny_data.name, "other"]
    assert report["timing"]["total_seconds"] >= 0
    assert set(report["timing"]["checkpoint_load_seconds"]) == {"run_a", "run_b"}
    n_pairs = {tiny_data.name: len(read(tiny_data / "val_pairs_length_diff_0.2.json")),
               "other": len(read(other_data / "val_pairs_length_diff_0.2.json"))}
    for name, rows in ((tiny_data.name, 20), ("other", 15)):
        res = report["results"][name]
        assert res["rows"] == rows and res["pairs"] == n_pairs[name] > 0
        assert set(res["models"]) == {"run_a", "run_b"}
        for metrics in [*res["models"].values(), *res["baselines"].values()]:
            assert METRIC_KEYS <= metrics.keys()
            assert -1.0 <= metrics["kendall_tau"] <= 1.0 and -1.0 <= metrics["spearman_rho"] <= 1.0
            assert 0.0 <= metrics["pairwise_accuracy"] <= 1.0
            assert all(math.isfinite(metrics[k]) for k in SCORES)
            assert metrics["rows"] == rows and metrics["pairs"] == n_pairs[name]


def test_checkpoint_metrics_equal_a_direct_computation(evaluated, tiny_model_dir, tiny_data, checkpoints):
    """Scores mapped back to the right rows and pairs: recompute run_b on tiny_data by hand."""
    _, report, _ = evaluated
    model_name = str(tiny_model_dir)
    scorer = PromptScorer(load_ranker(model_name, checkpoints[1]), load_tokenizer(model_name), device="cpu")
    rows, pairs = read(tiny_data / "val_data.json"), read(tiny_data / "val_pairs_length_diff_0.2.json")
    scores = scorer.score([r["prompt"] for r in rows])
    got = report["results"][tiny_data.name]["models"]["run_b"]
    lengths = [r["answer_length"] for r in rows]
    assert got["kendall_tau"] == pytest.approx(stats.kendalltau(scores, lengths).statistic, abs=1e-6)
    assert got["spearman_rho"] == pytest.approx(stats.spearmanr(scores, lengths).statistic, abs=1e-6)
    a, b = scorer.score([p["prompt_A"] for p in pairs]), scorer.score([p["prompt_B"] for p in pairs])
    right = sum((sa > sb) == bool(p["label"]) for sa, sb, p in zip(a, b, pairs, strict=True))
    assert got["pairwise_accuracy"] == pytest.approx(right / len(pairs))
    # tau minus each baseline's tau, on the same rows
    base = report["results"][tiny_data.name]["baselines"]
    diffs = got["tau_minus_baseline"]
    assert set(diffs) == set(base)
    for name, d in diffs.items():
        assert d["difference"] == pytest.approx(got["kendall_tau"] - base[name]["kendall_tau"], abs=1e-9)
        assert d["ci95_low"] <= d["difference"] <= d["ci95_high"]
    # Different seeds, different fc: the two checkpoints are not scored as one.
    assert got["kendall_tau"] != report["results"][tiny_data.name]["models"]["run_a"]["kendall_tau"]
    # every checkpoint after the first against the first, on the same rows
    first = report["results"][tiny_data.name]["models"]["run_a"]
    assert "tau_minus_first_checkpoint" not in first
    d = got["tau_minus_first_checkpoint"]
    assert d["difference"] == pytest.approx(got["kendall_tau"] - first["kendall_tau"], abs=1e-9)
    assert d["ci95_low"] <= d["difference"] <= d["ci95_high"]


def test_baselines_beside_every_checkpoint(evaluated, tiny_data):
    _, report, _ = evaluated
    tiny = report["results"][tiny_data.name]["baselines"]
    assert set(tiny) == {"prompt_chars", "prompt_tokens", "tfidf_ridge"}
    # Tiny data: prompts that ask for a "long detailed essay" get long answers; TF-IDF must find that.
    assert tiny["tfidf_ridge"]["kendall_tau"] > 0.3 and tiny["tfidf_ridge"]["pairwise_accuracy"] > 0.7
    assert tiny["tfidf_ridge"]["train_rows"] == 60
    rows = read(tiny_data / "val_data.json")
    lengths = [r["answer_length"] for r in rows]
    expected = stats.kendalltau([len(r["prompt"]) for r in rows], lengths).statistic
    assert tiny["prompt_chars"]["kendall_tau"] == pytest.approx(expected)
    # No train_data.json beside the second val set: the TF-IDF baseline is skipped, with a note.
    assert set(report["results"]["other"]["baselines"]) == {"prompt_chars", "prompt_tokens"}
    assert any("other" in n and "TF-IDF baseline skipped" in n for n in report["notes"])


def test_matrix_in_report_and_in_its_own_file(evaluated, tiny_data):
    out, report, _ = evaluated
    matrix = read(out.with_name("eval_matrix.json"))
    assert matrix == report["matrix"]
    assert matrix["rows"] == ["run_a", "run_b"] and matrix["cols"] == [tiny_data.name, "other"]
    assert len(matrix["values"]) == 2 and all(len(row) == 2 for row in matrix["values"])
    for i, ckpt in enumerate(matrix["rows"]):
        for j, ds in enumerate(matrix["cols"]):
            assert matrix["values"][i][j] == report["results"][ds]["models"][ckpt]["kendall_tau"]
    assert matrix["baselines"]["tfidf_ridge"][1] is None  # skipped on "other"


def test_plots_written(evaluated):
    out, report, _ = evaluated
    for name in ("eval_matrix.png", "eval_score_vs_length.png"):
        png = out.with_name(name)
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG_MAGIC
    assert set(report["plots"]) == {"matrix", "score_vs_length"}


def test_table_printed(evaluated, tiny_data):
    _, report, stdout = evaluated
    for name in ("run_a (checkpoint)", "run_b (checkpoint)", "prompt_chars (baseline)",
                 "tfidf_ridge (baseline)", "Kendall's tau, checkpoint (rows) x dataset (columns)"):
        assert name in stdout
    tau = report["results"][tiny_data.name]["models"]["run_a"]["kendall_tau"]
    assert f"{tau:.4f}" in stdout


def test_max_rows_subset_single_cell_no_plots(tiny_model_dir, tiny_data, checkpoints, tmp_path):
    out = tmp_path / "small.json"
    argv = ["--checkpoint", str(checkpoints[0]), "--model-name", str(tiny_model_dir), "--val-data",
            str(tiny_data / "val_data.json"), "--max-rows", "6", "--device", "cpu", "--no-plots",
            "--output", str(out)]
    run_main(argv)
    report = read(out)
    res = report["results"][tiny_data.name]["models"]["run_a"]
    assert res["rows"] == 6 and res["pairs"] == 6
    assert report["inputs"]["datasets"][0]["rows_total"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.json"]  # one cell: no matrix; no plots
    # Seeded: the same subset again gives the same numbers.
    run_main(argv)
    again = read(out)["results"][tiny_data.name]
    for kind in ("models", "baselines"):
        for name, metrics in report["results"][tiny_data.name][kind].items():
            assert {k: metrics[k] for k in SCORES} == {k: again[kind][name][k] for k in SCORES}


def test_short_names_and_per_item():
    names = evaluate.short_names
    assert names(["/r/sharegpt/best_model.pt", "/r/lmsys/best_model.pt"]) == ["sharegpt", "lmsys"]
    assert names(["/r/a/best_model.pt", "/r/a/last_model.pt"]) == ["a/best_model", "a/last_model"]
    assert names(["/o/lmsys/gpt4/val_data.json", "/o/alpaca/gpt4/val_data.json", "/o/sharegpt/val_data.json"]
                 ) == ["lmsys/gpt4", "alpaca/gpt4", "sharegpt"]
    assert names(["/r/a/m.pt", "/r/a/m.pt"]) == ["a/m#1", "a/m#2"]
    assert evaluate.per_item(["x"], 3, "--model-name", "--checkpoint") == ["x", "x", "x"]
    with pytest.raises(PARSError, match="one per --checkpoint"):
        evaluate.per_item(["x", "y"], 3, "--model-name", "--checkpoint")


def test_token_and_char_baselines(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    long_prompt = " ".join(["write"] * 300)
    assert prompt_char_lengths(["ab", "", long_prompt]) == [2.0, 0.0, float(len(long_prompt))]
    # No truncation at the ranker's max_length (128): all 300 words counted, special tokens not.
    assert prompt_token_lengths(["write a poem", long_prompt], tokenizer) == [3.0, 300.0]


def test_tfidf_baseline_learns_and_is_deterministic(tiny_data):
    rows = read(tiny_data / "train_data.json")
    prompts, lengths = [r["prompt"] for r in rows], [r["answer_length"] for r in rows]
    probe = ["write a long detailed essay about rome", "give a one word answer about rome"]
    first = TfidfRidgeBaseline(seed=3).fit(prompts, lengths).score(probe)
    assert first == TfidfRidgeBaseline(seed=3).fit(prompts, lengths).score(probe)
    assert first[0] > first[1]


def test_tfidf_baseline_small_train_set_and_errors():
    # Every term appears once: min_df=2 leaves no vocabulary, the baseline falls back to min_df=1.
    model = TfidfRidgeBaseline().fit(["essay please", "yes"], [1000, 3])
    assert model.score(["essay"])[0] > model.score(["yes"])[0]
    with pytest.raises(PARSError, match="at least 2"):
        TfidfRidgeBaseline().fit(["one"], [1])
    with pytest.raises(PARSError, match="no words"):
        TfidfRidgeBaseline().fit(["!!", "?"], [1, 2])


def write_metrics(path: Path, with_tau: bool = True) -> Path:
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_accuracy": 0.5 + 0.1 * e,
                **({"val_kendall_tau": 0.1 * e} if with_tau else {})} for e in (1, 2, 3)]
    path.write_text(json.dumps({"model_name": "x", "history": history}), encoding="utf-8")
    return path


def test_training_curves_png(tmp_path):
    out = plot_training_curves(write_metrics(tmp_path / "a.json", with_tau=False), tmp_path / "a.png")
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 1000


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "predictor_train" / "scripts" / name), *args],
                          capture_output=True, text=True, timeout=120)


def test_plot_training_curves_script(tmp_path):
    metrics = write_metrics(tmp_path / "metrics.json")
    proc = run_script("plot_training_curves.py", "--metrics", str(metrics))
    assert proc.returncode == 0, proc.stderr
    png = tmp_path / "training_curves.png"  # default: beside metrics.json
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000
    (tmp_path / "bad.json").write_text(json.dumps({"history": [{"epoch": 1}]}))
    proc = run_script("plot_training_curves.py", "--metrics", str(tmp_path / "bad.json"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "has no numeric 'train_loss'" in proc.stderr


def test_evaluate_script_bad_input_one_line(tiny_model_dir, tiny_data, checkpoints, tmp_path):
    missing = run_script("evaluate_ranker.py", "--checkpoint", str(tmp_path / "nope.pt"),
                         "--val-data", str(tiny_data / "val_data.json"))
    (tmp_path / "val_data.json").write_text('[{"prompt": "a", "answer_length": 3},')
    malformed = run_script("evaluate_ranker.py", "--checkpoint", str(checkpoints[0]), "--model-name",
                           str(tiny_model_dir), "--val-data", str(tmp_path / "val_data.json"))
    for proc, expected in ((missing, "checkpoint not found"), (malformed, "not valid JSON")):
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
        assert not (tmp_path / "evaluation.json").exists()


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--val-pairs", "a.json", "b.json"], "--val-pairs: give one file per --val-data (1), got 2"),
        (["--model-name", "m1", "m2", "m3"], "--model-name: give one value or one per --checkpoint (2)"),
        (["--train-data", "t1.json", "t2.json"], "--train-data: give one value or one per --val-data (1)"),
        (["--train-data", "nope.json"], "train data file not found"),
        (["--val-pairs", "nope.json"], "val pairs file not found"),
        (["--max-rows", "0"], "--max-rows must be >= 1"),
        (["--threshold", "1.5"], "--threshold must be in [0, 1)"),
        (["--device", "gpu"], "is not a device"),
    ],
)
def test_bad_arguments_exit_2_one_line(tiny_data, checkpoints, tmp_path, capsys, extra, expected):
    argv = ["--checkpoint", str(checkpoints[0]), str(checkpoints[1]), "--val-data",
            str(tiny_data / "val_data.json"), "--output", str(tmp_path / "e.json"), *extra]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err
    assert not (tmp_path / "e.json").exists()
