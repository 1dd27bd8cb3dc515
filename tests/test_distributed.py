"""torchrun with 2 gloo processes on CPU: one set of outputs, the same training as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_fast import no_dropout_copy

from pars.model.checkpoint import read_state_dict
from pars.train import loop as train

ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = {"best_model.pt", "last_model.pt", "ranker_config.json", "metrics.json", "training_curves.png"}


def test_two_process_gloo_run_matches_one_process(tiny_model_dir, tiny_data, tmp_path):
    model_dir = no_dropout_copy(tiny_model_dir, tmp_path / "model")  # dropout off: runs comparable exactly
    common = ["--train-file", str(tiny_data / "train_pairs_length_diff_0.2.json"),
              "--val-file", str(tiny_data / "val_pairs_length_diff_0.2.json"), "--model-name", str(model_dir),
              "--batch-size", "15", "--num-epochs", "1", "--max-steps", "4", "--learning-rate", "1e-3",
              # float32: bf16 autocast rounds a rank's 8-row matmuls differently from one process's 15 rows,
              # and this compares the two to 1e-5
              "--device", "cpu", "--mixed-precision", "no"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "predictor_train" / "scripts" / "train_pairwise_bert.py"), *common,
                           "--output-dir", str(tmp_path / "ddp")],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in (tmp_path / "ddp").iterdir()} == OUTPUTS  # rank 0 only: no duplicates, no temp files
    assert proc.stdout.count("Saved metrics to") == 1 and proc.stdout.count("Epoch 1:") == 1
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 4 and len(metrics["peak_rss_mib"]) == 2
    assert metrics["throughput"]["pairs"] == 60  # 4 global batches of 15, split 8 + 7 over the ranks

    # the same global batches on one process: same weights (DDP averages the ranks' gradients, each
    # weighted by its share of the batch) and the same validation metrics
    assert train.main([*common, "--output-dir", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    for key in ("train_loss", "val_loss", "val_accuracy", "val_kendall_tau"):
        assert abs(one["history"][0][key] - metrics["history"][0][key]) < 1e-5, key
    want = read_state_dict(tmp_path / "one" / "last_model.pt")
    got = read_state_dict(tmp_path / "ddp" / "last_model.pt")
    # fc.bias is left out: the loss sees only score differences, so its gradient is zero up to rounding
    # noise, which AdamW turns into +-lr steps that differ between any two summation orders.
    assert max((want[k] - got[k]).abs().max().item() for k in want if k != "fc.bias") < 1e-4


@pytest.mark.parametrize("loss", ["margin", "listmle", "classification"])
def test_two_process_in_batch_run_under_bf16_autocast(tiny_model_dir, tiny_data, tmp_path, loss):
    """The default on CPUs with AMX (bf16 autocast) under torchrun, with in-batch pairs gathered across the
    ranks: one set of outputs, and the same loss as one process up to bf16 rounding. ListMLE and the
    classification loss are taken over the gathered batch too (the latter gathers the head's rows)."""
    model_dir = no_dropout_copy(tiny_model_dir, tmp_path / "model")
    common = ["--train-file", str(tiny_data / "train_pairs_length_diff_0.2.json"),
              "--val-file", str(tiny_data / "val_pairs_length_diff_0.2.json"), "--model-name", str(model_dir),
              "--pairing", "in-batch", "--batch-size", "16", "--num-epochs", "1", "--max-steps", "3",
              "--learning-rate", "1e-3", "--device", "cpu", "--mixed-precision", "bf16", "--loss", loss,
              "--num-buckets", "3"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "predictor_train" / "scripts" / "train_pairwise_bert.py"), *common,
                           "--output-dir", str(tmp_path / "ddp")],
                          capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.name for p in (tmp_path / "ddp").iterdir()} == OUTPUTS
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["mixed_precision"] == "bf16" and metrics["steps"] == 3
    assert train.main([*common, "--output-dir", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert metrics["loss"] == loss
    assert abs(one["history"][0]["train_loss"] - metrics["history"][0]["train_loss"]) < 0.005
