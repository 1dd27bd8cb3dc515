"""pars/model/ranker_config.py: a ranker carries its settings; the service, evaluator and experiments read them."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from pars.common.errors import PARSError
from pars.data.readers import DATASET_INFO, length_unit_beside
from pars.model import precision
from pars.model.checkpoint import load_ranker, save_checkpoint
from pars.model.ranker import PairwiseRanker
from pars.model.ranker_config import CONFIG_NAME, ORIGINAL, RankerConfig, read_ranker_config, resolve
from pars.model.scoring import PromptScorer
from pars.serving.engine import load_scorer
from pars.serving.settings import Settings
from tests.serving_helpers import PROMPTS, running_server, start_server


@pytest.fixture(scope="module")
def configured(tiny_model_dir, tmp_path_factory):
    """A checkpoint with a ranker_config.json beside it: mean pooling, middle cut, 16 tokens."""
    torch.manual_seed(11)
    out = tmp_path_factory.mktemp("configured")
    save_checkpoint(PairwiseRanker.from_pretrained(str(tiny_model_dir), "mean"), out / "best_model.pt")
    RankerConfig(model_name=str(tiny_model_dir), pooling="mean", truncation="middle", max_length=16,
                 length_unit="words", loss="margin").save(out)
    return out / "best_model.pt"


def expected(tiny_model_dir, ckpt, pooling, truncation, max_length) -> list[float]:
    scorer = PromptScorer(load_ranker(str(tiny_model_dir), ckpt, pooling), AutoTokenizer.from_pretrained(
        str(tiny_model_dir)), max_length=max_length, device="cpu", truncation=truncation)
    return scorer.score(PROMPTS)


def test_each_setting_round_trips(tmp_path):
    config = RankerConfig(model_name="enc", pooling="mean", truncation="middle", max_length=77,
                          length_unit="tokens of x", loss="margin")
    path = config.save(tmp_path)
    assert path.name == CONFIG_NAME and json.loads(path.read_text())["format"] == "pars-ranker"
    back = read_ranker_config(tmp_path / "best_model.pt")
    assert back == config
    assert back.recorded == {"model_name", "pooling", "truncation", "max_length"}
    assert back.source == str(path)
    assert read_ranker_config(tmp_path) == config  # a directory (an export) is read the same way


def test_training_copies_the_length_unit_that_preprocessing_recorded(tmp_path):
    assert length_unit_beside(tmp_path / "train_pairs.json") is None
    (tmp_path / DATASET_INFO).write_text(json.dumps({"length_unit": "tokens of my-llm"}))
    assert length_unit_beside(tmp_path / "train_pairs.json") == "tokens of my-llm"


def test_contradiction_is_refused_in_one_line_and_agreement_or_silence_is_not(tmp_path):
    RankerConfig(model_name="enc", pooling="mean", truncation="middle", max_length=64).save(tmp_path)
    ckpt = tmp_path / "best_model.pt"
    with pytest.raises(PARSError) as err:
        resolve(ckpt, {"pooling": "pooler"}, name=lambda k: f"PREDICTOR_{k.upper()}")
    assert "PREDICTOR_POOLING=pooler" in str(err.value) and "pooling=mean" in str(err.value)
    assert "\n" not in str(err.value)
    assert resolve(ckpt, {"pooling": "mean", "max_length": None}).max_length == 64


def test_a_bare_checkpoint_has_the_original_settings_unless_given(tmp_path):
    bare = tmp_path / "best_model.pt"
    config = read_ranker_config(bare)
    assert {k: getattr(config, k) for k in ORIGINAL} == ORIGINAL and not config.recorded
    assert resolve(bare, {"max_length": 256, "pooling": None}).max_length == 256  # nothing recorded to contradict


def test_an_older_run_is_read_from_its_metrics_json(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"max_length": 256, "truncation": "middle", "margin": 1.0}))
    config = read_ranker_config(tmp_path / "best_model.pt")
    assert (config.max_length, config.truncation, config.pooling) == (256, "middle", "pooler")
    assert config.recorded == {"max_length", "truncation"}
    with pytest.raises(PARSError, match="max_length=256"):
        resolve(tmp_path / "best_model.pt", {"max_length": 128})


@pytest.mark.parametrize("content, match", [({"format": "other"}, "not a PARS ranker config"),
                                            ({"format": "pars-ranker", "version": 99}, "upgrade"),
                                            ({"format": "pars-ranker", "version": 1, "pooling": "cls"}, "pooling")])
def test_a_bad_config_is_one_line(tmp_path, content, match):
    (tmp_path / CONFIG_NAME).write_text(json.dumps(content))
    with pytest.raises(PARSError, match=match):
        read_ranker_config(tmp_path / "best_model.pt")


def test_the_service_scores_with_the_config_alone(tiny_model_dir, configured):
    scorer = load_scorer(Settings(model_path=str(configured), device="cpu"))
    assert (scorer.config.pooling, scorer.truncation, scorer.max_length) == ("mean", "middle", 16)
    np.testing.assert_allclose(scorer.score(PROMPTS), expected(tiny_model_dir, configured, "mean", "middle", 16),
                               atol=1e-6)
    with pytest.raises(PARSError, match="PREDICTOR_TRUNCATION=head"):
        load_scorer(Settings(model_path=str(configured), truncation="head", device="cpu"))


def test_a_bare_original_checkpoint_is_served_with_the_original_settings(tiny_model_dir, checkpoint, direct):
    scorer = load_scorer(Settings(model_path=str(checkpoint), model_name=str(tiny_model_dir), device="cpu"))
    assert (scorer.config.pooling, scorer.truncation, scorer.max_length) == ("pooler", "head", 128)
    np.testing.assert_allclose(scorer.score(PROMPTS), direct.score(PROMPTS), atol=1e-6)


def test_get_root_and_metrics_show_the_settings_in_use(tiny_model_dir, configured):
    with running_server({"PREDICTOR_MODEL_PATH": str(configured), "PREDICTOR_DEVICE": "cpu"}) as url:
        root = httpx.get(url + "/").json()
        metrics = httpx.get(url + "/metrics").text
        scores = httpx.post(url + "/score_batch", json={"prompts": PROMPTS}).json()["scores"]
    assert root["ranker"] == {"model_name": str(tiny_model_dir), "pooling": "mean", "truncation": "middle",
                              "max_length": 16, "length_unit": "words", "loss": "margin",
                              "config_source": str(configured.parent / CONFIG_NAME)}
    assert root["dtype"] == "float32" and root["model_name"] == str(tiny_model_dir)
    assert 'pooling="mean"' in metrics and 'truncation="middle"' in metrics and 'dtype="float32"' in metrics
    np.testing.assert_allclose(scores, expected(tiny_model_dir, configured, "mean", "middle", 16), atol=1e-5)


def test_a_contradicting_setting_stops_start_up_with_one_line(configured):
    proc, _ = start_server({"PREDICTOR_MODEL_PATH": str(configured), "PREDICTOR_POOLING": "pooler",
                            "PREDICTOR_DEVICE": "cpu"})
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode != 0
    assert "PREDICTOR_POOLING=pooler" in out and "Traceback" not in out


@pytest.mark.parametrize("device, native_bf16, backend, want", [
    ("cuda", False, "torch", "float16"), ("cpu", True, "torch", "bfloat16"), ("cpu", False, "torch", "float32"),
    ("cpu", True, "onnx-int8", "float32"), ("mps", True, "torch", "float32")])
def test_the_default_dtype_follows_the_device(monkeypatch, device, native_bf16, backend, want):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)
    assert precision.inference_dtype(torch.device(device), backend) == want


@pytest.mark.parametrize("native_bf16, want", [(True, torch.bfloat16), (False, torch.float32)])
def test_the_service_default_is_auto(monkeypatch, checkpoint, tiny_model_dir, native_bf16, want):
    monkeypatch.delenv("PREDICTOR_DTYPE", raising=False)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)
    settings = Settings(model_path=str(checkpoint), model_name=str(tiny_model_dir), device="cpu")
    assert settings.dtype == "auto"
    assert load_scorer(settings).dtype == want


def test_fine_tuning_continues_the_rankers_settings(configured, tiny_data, tmp_path):
    from pars.train import loop as train

    base = ["--train-file", str(tiny_data / "train_pairs_length_diff_0.2.json"),
            "--val-file", str(tiny_data / "val_pairs_length_diff_0.2.json"), "--resume-from", str(configured),
            "--num-epochs", "1", "--batch-size", "8", "--max-train-samples", "16", "--device", "cpu"]
    assert train.main([*base, "--output-dir", str(tmp_path / "tuned")]) == 0
    tuned = read_ranker_config(tmp_path / "tuned" / "best_model.pt")
    assert (tuned.model_name, tuned.pooling, tuned.truncation, tuned.max_length) == (
        read_ranker_config(configured).model_name, "mean", "middle", 16)
    with pytest.raises(PARSError, match="--pooling=pooler"):
        train.main([*base, "--output-dir", str(tmp_path / "other"), "--pooling", "pooler"])

