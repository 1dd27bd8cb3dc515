"""pars/model/trained_settings.py: a checkpoint scored with other settings than it was trained with is called out."""

from __future__ import annotations

import json
import logging
import shutil

from pars.eval import evaluate
from pars.model.trained_settings import mismatches, trained_settings
from pars.serving.engine import load_scorer
from pars.serving.settings import Settings


def beside(checkpoint, tmp_path, metrics: dict | None):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(checkpoint, run / "best_model.pt")
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    return run / "best_model.pt"


def test_settings_come_from_the_metrics_beside_the_checkpoint(checkpoint, tmp_path):
    ckpt = beside(checkpoint, tmp_path, {"max_length": 256, "truncation": "middle", "pooling": "mean",
                                         "learning_rate": 5e-5})
    assert trained_settings(ckpt) == {"max_length": 256, "truncation": "middle", "pooling": "mean"}
    assert mismatches(ckpt, max_length=256, truncation="head", pooling="mean") == [("truncation", "middle", "head")]
    assert mismatches(ckpt, max_length=256, truncation="middle", pooling="mean") == []


def test_older_or_missing_metrics_check_nothing_they_do_not_record(checkpoint, tmp_path):
    older = beside(checkpoint, tmp_path, {"max_length": 128})  # written before truncation and pooling existed
    assert mismatches(older, max_length=128, truncation="middle", pooling="mean") == []
    assert mismatches(older, max_length=64) == [("max_length", 128, 64)]
    (older.parent / "metrics.json").write_text("not json")
    assert trained_settings(older) == {} and trained_settings(None) == {}
    assert trained_settings(tmp_path / "nowhere" / "best_model.pt") == {}


def test_service_warns_when_served_otherwise(tiny_model_dir, checkpoint, tmp_path, caplog):
    ckpt = beside(checkpoint, tmp_path, {"max_length": 128, "truncation": "head", "pooling": "mean"})
    with caplog.at_level(logging.WARNING, logger="pars.serving"):
        load_scorer(Settings(model_path=str(ckpt), model_name=str(tiny_model_dir), device="cpu"))
    assert "pooling=mean" in caplog.text and "PREDICTOR_POOLING=pooler" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pars.serving"):
        load_scorer(Settings(model_path=str(ckpt), model_name=str(tiny_model_dir), device="cpu", pooling="mean"))
    assert "trained with" not in caplog.text


def test_evaluate_warns_when_scored_otherwise(tiny_model_dir, checkpoint, tiny_data, tmp_path, capsys):
    ckpt = beside(checkpoint, tmp_path, {"max_length": 16, "truncation": "middle"})
    assert evaluate.main(["--checkpoint", str(ckpt), "--model-name", str(tiny_model_dir), "--max-length", "16",
                          "--val-data", str(tiny_data / "val_data.json"), "--device", "cpu", "--no-plots",
                          "--output", str(tmp_path / "eval.json")]) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "trained with --truncation middle" in warnings[0]  # max_length matches
