"""Mean pooling (pars/model/ranker.py): the same pooling in training, evaluation, ONNX export and serving."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import AutoTokenizer

from pars.common.errors import PARSError
from pars.eval import evaluate
from pars.model.backends import cache_key, load_onnx_ranker
from pars.model.checkpoint import load_ranker
from pars.model.export import to_sequence_classification
from pars.model.ranker import PairwiseRanker
from pars.model.ranker_config import read_ranker_config
from pars.model.scoring import PromptScorer
from pars.serving.engine import load_scorer
from pars.serving.settings import Settings
from pars.train import loop as train

PROMPTS = ["write a long detailed essay about the sea", "yes", "give a one word answer please now"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def test_mean_is_the_masked_mean_of_the_token_states(tiny_model_dir, checkpoint, tokenizer):
    model = load_ranker(str(tiny_model_dir), checkpoint, pooling="mean").eval()
    enc = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = model.encode(enc["input_ids"], enc["attention_mask"])
        for i, prompt in enumerate(PROMPTS):  # alone, unpadded: the mean over every token
            alone = tokenizer(prompt, return_tensors="pt")
            hidden = model.encoder(**alone).last_hidden_state[0]
            torch.testing.assert_close(pooled[i], hidden.mean(dim=0), atol=1e-5, rtol=1e-5)
    # and not the pooler's vector, which the default still reads
    default = load_ranker(str(tiny_model_dir), checkpoint).eval()
    assert default.pooling == "pooler"
    with torch.no_grad():
        assert not torch.allclose(default.encode(enc["input_ids"], enc["attention_mask"]), pooled, atol=1e-3)


def test_unknown_pooling_is_a_clear_error(tiny_model_dir):
    with pytest.raises(PARSError, match="unknown pooling 'max'"):
        load_ranker(str(tiny_model_dir), pooling="max")


def test_onnx_export_keeps_mean_pooling(tiny_model_dir, checkpoint, tokenizer, tmp_path):
    want = PromptScorer(load_ranker(str(tiny_model_dir), checkpoint, pooling="mean"), tokenizer, device="cpu")
    onnx = load_onnx_ranker(str(tiny_model_dir), checkpoint, "onnx", tmp_path, log=lambda _: None, pooling="mean")
    got = PromptScorer(onnx, tokenizer, device="cpu")
    np.testing.assert_allclose(got.score(PROMPTS), want.score(PROMPTS), atol=1e-5)
    # its own cache entry; the default's key is the one graphs cached before pooling existed have
    assert cache_key(str(tiny_model_dir), checkpoint, "onnx", "mean") != cache_key(str(tiny_model_dir), checkpoint,
                                                                                    "onnx")
    assert onnx.graph.parent.name == cache_key(str(tiny_model_dir), checkpoint, "onnx", "mean")


def test_hf_export_refuses_mean_pooling(tiny_model_dir, checkpoint, tmp_path):
    with pytest.raises(PARSError, match="PREDICTOR_POOLING=mean"):
        to_sequence_classification(load_ranker(str(tiny_model_dir), checkpoint, pooling="mean"))
    out = tmp_path / "hf"
    to_sequence_classification(load_ranker(str(tiny_model_dir), checkpoint)).save_pretrained(out)
    with pytest.raises(PARSError, match="pooler"):
        load_ranker(str(tiny_model_dir), out, pooling="mean")


def test_training_pools_as_told_and_records_it(tiny_model_dir, tiny_data, tokenizer, tmp_path):
    out = tmp_path / "mean"
    args = ["--train-file", str(tiny_data / "train_pairs_length_diff_0.2.json"),
            "--val-file", str(tiny_data / "val_pairs_length_diff_0.2.json"), "--output-dir", str(out),
            "--model-name", str(tiny_model_dir), "--batch-size", "16", "--num-epochs", "1",
            "--learning-rate", "1e-3", "--device", "cpu", "--save-every-steps", "4"]
    assert train.main([*args, "--pooling", "mean"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pooling"] == "mean"
    config = read_ranker_config(out / "best_model.pt")  # training wrote it beside the checkpoints
    assert (config.pooling, config.model_name, config.source) == ("mean", str(tiny_model_dir),
                                                                  str(out / "ranker_config.json"))
    # the checkpoint, scored with mean pooling, reproduces the val accuracy training measured
    pairs = json.loads((tiny_data / "val_pairs_length_diff_0.2.json").read_text())
    scorer = PromptScorer(load_ranker(str(tiny_model_dir), out / "last_model.pt", pooling="mean"), tokenizer,
                          device="cpu")
    a, b = scorer.score([p["prompt_A"] for p in pairs]), scorer.score([p["prompt_B"] for p in pairs])
    accuracy = float(np.mean([(x > y) == (p["label"] == 1) for x, y, p in zip(a, b, pairs, strict=True)]))
    assert accuracy == pytest.approx(metrics["history"][-1]["val_accuracy"], abs=1e-6)
    with pytest.raises(PARSError, match="different run .pooling"):
        train.main([*args, "--resume-state", "auto"])  # the default pooling, pooler


def test_evaluate_names_a_mean_pooled_checkpoint(tiny_model_dir, checkpoint, tiny_data, tmp_path):
    out = tmp_path / "eval.json"
    assert evaluate.main(["--checkpoint", str(checkpoint), str(checkpoint), "--model-name", str(tiny_model_dir),
                          "--pooling", "pooler", "mean", "--val-data", str(tiny_data / "val_data.json"),
                          "--device", "cpu", "--max-length", "16", "--output", str(out)]) == 0
    checkpoints = json.loads(out.read_text())["inputs"]["checkpoints"]
    assert [c["pooling"] for c in checkpoints] == ["pooler", "mean"]
    assert checkpoints[1]["name"] == f"{checkpoints[0]['name']}+mean"


def test_service_settings_carry_the_pooling(tiny_model_dir, checkpoint, tokenizer, monkeypatch):
    monkeypatch.setenv("PREDICTOR_POOLING", "mean")
    settings = Settings(model_path=str(checkpoint), model_name=str(tiny_model_dir), device="cpu")
    assert settings.pooling == "mean"
    want = PromptScorer(load_ranker(str(tiny_model_dir), checkpoint, pooling="mean"), tokenizer, device="cpu")
    np.testing.assert_allclose(load_scorer(settings).score(PROMPTS), want.score(PROMPTS), atol=1e-6)
    monkeypatch.setenv("PREDICTOR_POOLING", "cls")
    with pytest.raises(ValidationError):
        Settings()


def test_state_dict_keys_do_not_depend_on_pooling(tiny_model_dir):
    keys = PairwiseRanker.from_pretrained(str(tiny_model_dir)).state_dict().keys()
    assert keys == PairwiseRanker.from_pretrained(str(tiny_model_dir), "mean").state_dict().keys()
