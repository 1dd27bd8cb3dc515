"""Full-state resume: a run SIGKILLed mid-epoch and resumed ends where the uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pars.common.errors import PARSError
from pars.model.checkpoint import read_state_dict
from pars.train import loop as train
from pars.train.state import STATE_FILE, check_signature, load_state

ROOT = Path(__file__).resolve().parents[1]


def args_for(tiny_model_dir, tiny_data, out, *extra):
    # 240 pairs / 16 = 15 steps per epoch, 2 epochs; the tiny encoder keeps its dropout, so the dropout
    # masks after the resume must come from the restored RNG state for the weights to match.
    return ["--train-file", str(tiny_data / "train_pairs_length_diff_0.2.json"),
            "--val-file", str(tiny_data / "val_pairs_length_diff_0.2.json"), "--output-dir", str(out),
            "--model-name", str(tiny_model_dir), "--batch-size", "16", "--num-epochs", "2",
            "--learning-rate", "1e-3", "--device", "cpu", "--save-every-steps", "4", *extra]


def test_killed_run_resumes_to_the_same_weights(tiny_model_dir, tiny_data, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert train.main(args_for(tiny_model_dir, tiny_data, whole)) == 0

    # killed by SIGKILL after step 19 (epoch 2, mid-epoch); its last state is from step 16. With this process's
    # thread count: float sums over another number of threads differ in the last bits (a server test earlier in
    # the session may have set it, as the service does at start-up).
    proc = subprocess.run([sys.executable, str(ROOT / "predictor_train" / "scripts" / "train_pairwise_bert.py"),
                           *args_for(tiny_model_dir, tiny_data, broken, "--debug-kill-after-step", "19")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (broken / "last_model.pt").exists() and not (broken / "metrics.json").exists()
    state = load_state(broken / STATE_FILE)  # weights_only=True
    assert state["position"]["step"] == 16 and state["position"]["epoch"] == 1 and state["position"]["batch"] == 1
    assert len(state["history"]) == 1

    assert train.main(args_for(tiny_model_dir, tiny_data, broken, "--resume-state", "auto")) == 0
    for name in ("last_model.pt", "best_model.pt"):
        want, got = read_state_dict(whole / name), read_state_dict(broken / name)
        assert max((want[k] - got[k]).abs().max().item() for k in want) < 1e-6, name
    m_whole = json.loads((whole / "metrics.json").read_text())
    m_broken = json.loads((broken / "metrics.json").read_text())
    assert m_broken["resumed_from_state"] == str(broken / STATE_FILE) and m_broken["steps"] == 30
    for a, b in zip(m_whole["history"], m_broken["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy", "val_kendall_tau"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    # the final state is the end of epoch 2: resuming again has nothing left to train
    assert load_state(broken / STATE_FILE)["position"] == {**load_state(whole / STATE_FILE)["position"]}


class Crash(Exception):
    pass


def test_resume_without_rng_restore_would_differ(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    """The check above can fail: resumed without its RNG states (dropout masks), a run ends elsewhere."""
    short = ("--max-steps", "8", "--num-epochs", "1")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert train.main(args_for(tiny_model_dir, tiny_data, whole, *short)) == 0

    def crash(pid, sig):
        raise Crash  # in-process stand-in for the SIGKILL: the run stops right after step 6

    monkeypatch.setattr(train.os, "kill", crash)
    with pytest.raises(Crash):
        train.main(args_for(tiny_model_dir, tiny_data, broken, *short, "--debug-kill-after-step", "6"))
    assert load_state(broken / STATE_FILE)["position"]["step"] == 4
    monkeypatch.setattr(train, "restore_rng", lambda rng: None)
    assert train.main(args_for(tiny_model_dir, tiny_data, broken, *short, "--resume-state", "auto")) == 0
    want, got = read_state_dict(whole / "last_model.pt"), read_state_dict(broken / "last_model.pt")
    assert max((want[k] - got[k]).abs().max().item() for k in want) > 1e-5


def test_resume_with_other_arguments_is_refused(tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "run"
    assert train.main(args_for(tiny_model_dir, tiny_data, out, "--max-steps", "4", "--num-epochs", "1")) == 0
    with pytest.raises(PARSError, match="different run .batch_size"):
        train.main(args_for(tiny_model_dir, tiny_data, out, "--max-steps", "4", "--num-epochs", "1",
                            "--batch-size", "8", "--resume-state", "auto"))
    for other in (("--truncation", "middle"), ("--max-length", "64")):
        with pytest.raises(PARSError, match=f"different run .{other[0][2:].replace('-', '_')}"):
            train.main(args_for(tiny_model_dir, tiny_data, out, "--max-steps", "4", "--num-epochs", "1",
                                *other, "--resume-state", "auto"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PARSError, match="corrupt"):
        train.main(args_for(tiny_model_dir, tiny_data, out, "--resume-state", str(tmp_path / "junk.pt")))
    torch.save({"format": 1, "x": object()}, tmp_path / "evil.pt")
    with pytest.raises(PARSError):
        load_state(tmp_path / "evil.pt")


def test_signature_keys_missing_from_an_older_state_are_not_checked():
    older = {"batch_size": 16}  # written before max_length and truncation were recorded
    check_signature(older, {"batch_size": 16, "max_length": 256, "truncation": "middle"}, "old.pt")
    with pytest.raises(PARSError, match="batch_size"):
        check_signature(older, {"batch_size": 8, "max_length": 128}, "old.pt")
