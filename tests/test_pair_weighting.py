"""Length-weighted ranking: the metric (pars.eval.rank_metrics.length_weighted_tau) and the loss weights
(--pair-weighting length-diff)."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest
import torch
import torch.nn as nn

from pars.common.errors import PARSError
from pars.eval.rank_metrics import length_weighted_tau
from pars.train import loop as train
from pars.train.losses import pair_weights, weighted_margin_loss
from tests.test_train import train_args


def brute_force(scores, lengths):
    signed = total = 0.0
    for a, b in combinations(range(len(scores)), 2):
        diff = abs(lengths[a] - lengths[b])
        total += diff
        if scores[a] != scores[b] and lengths[a] != lengths[b]:
            signed += diff if (scores[a] > scores[b]) == (lengths[a] > lengths[b]) else -diff
    return signed / total


def total_completion_time(order, lengths):
    clock = done = 0.0
    for k in order:
        clock += lengths[k]
        done += clock
    return done


def test_length_weighted_tau_bounds_and_brute_force():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, size=40).astype(float)
    scores = lengths + rng.normal(0, 150, size=40)
    assert length_weighted_tau(lengths, lengths) == pytest.approx(1.0)
    assert length_weighted_tau(-lengths, lengths) == pytest.approx(-1.0)
    assert length_weighted_tau(scores, lengths) == pytest.approx(brute_force(scores, lengths))
    ties = np.round(scores / 100)  # score ties count 0
    assert length_weighted_tau(ties, lengths) == pytest.approx(brute_force(ties, lengths))
    capped = np.minimum(lengths, 200)
    assert length_weighted_tau(scores, lengths, cap=200) == pytest.approx(brute_force(scores, capped))
    assert np.isnan(length_weighted_tau([1.0], [2.0]))


def test_length_weighted_tau_is_the_excess_wait_over_shortest_first():
    """Jobs waiting together, served one at a time in score order: the total completion time over
    shortest-first's is (1 - metric) / 2 of the summed length differences."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 1000, size=30).astype(float)
    total_diff = sum(abs(a - b) for a, b in combinations(lengths, 2))
    sjf = total_completion_time(np.argsort(lengths), lengths)
    for noise in (0.0, 200.0, 2000.0):
        scores = lengths + rng.normal(0, noise, size=30) if noise else lengths.copy()
        excess = total_completion_time(np.argsort(scores), lengths) - sjf
        assert excess == pytest.approx((1 - length_weighted_tau(scores, lengths)) / 2 * total_diff)


def test_pair_weights_follow_the_capped_difference():
    lengths = torch.tensor([10.0, 30.0, 500.0, 900.0])
    i, j = torch.tensor([0, 0, 2, 1]), torch.tensor([1, 2, 3, 3])
    w = pair_weights(lengths, i, j, cap=400.0)
    diffs = torch.tensor([20.0, 390.0, 0.0, 370.0])  # 500 and 900 are both over the cap
    assert torch.allclose(w, diffs / diffs.mean())
    assert w.mean().item() == pytest.approx(1.0)
    same = pair_weights(torch.tensor([500.0, 600.0]), torch.tensor([0]), torch.tensor([1]), cap=400.0)
    assert same.tolist() == [1.0]  # no difference left under the cap: the pair counts as usual


def test_weighted_margin_loss():
    a, b = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([0.1, 0.5, 2.5])
    target = torch.tensor([1.0, -1.0, 1.0])
    ones = torch.ones(3)
    assert weighted_margin_loss(a, b, target, ones, 1.0).item() == pytest.approx(
        nn.MarginRankingLoss(margin=1.0)(a, b, target).item())
    w = torch.tensor([0.0, 0.0, 3.0])  # only the third pair: 3 * (1 - (2.0 - 2.5)) / 3
    assert weighted_margin_loss(a, b, target, w, 1.0).item() == pytest.approx(1.5)


def test_pair_weighting_needs_in_batch(tiny_model_dir, tiny_data, tmp_path):
    with pytest.raises(PARSError, match="--pairing in-batch"):
        train.main(train_args(tiny_model_dir, tiny_data, tmp_path, "--pair-weighting", "length-diff"))
    with pytest.raises(PARSError, match="--pair-weight-cap must be > 0"):
        train.main(train_args(tiny_model_dir, tiny_data, tmp_path, "--pairing", "in-batch",
                              "--pair-weighting", "length-diff", "--pair-weight-cap", "0"))


def test_length_weighted_training_learns_and_records_its_cap(tiny_model_dir, tiny_data, tmp_path):
    args = train_args(tiny_model_dir, tiny_data, tmp_path, "--pairing", "in-batch", "--num-epochs", "6",
                      "--pair-weighting", "length-diff")
    assert train.main(args) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    rows = json.loads((tiny_data / "train_data.json").read_text())
    assert metrics["pair_weighting"] == "length-diff"
    assert metrics["pair_weight_cap"] == pytest.approx(np.percentile([r["answer_length"] for r in rows], 98))
    assert metrics["best_val_accuracy"] > 0.75


def test_select_by_length_weighted_tau(tiny_model_dir, tiny_data, tmp_path):
    args = train_args(tiny_model_dir, tiny_data, tmp_path, "--num-epochs", "3",
                      "--select-by", "val_length_weighted_tau")
    assert train.main(args) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    rows = json.loads((tiny_data / "val_data.json").read_text())
    weighted = [h["val_length_weighted_tau"] for h in metrics["history"]]
    assert metrics["best_val_length_weighted_tau"] == max(weighted)
    best_epoch = weighted.index(max(weighted))
    assert metrics["best_val_kendall_tau"] == metrics["history"][best_epoch]["val_kendall_tau"]
    # the last epoch's value is the metric of last_model.pt's scores on the val rows
    from pars.model.checkpoint import load_ranker
    from pars.model.ranker import load_tokenizer
    from pars.model.scoring import PromptScorer

    scorer = PromptScorer(load_ranker(str(tiny_model_dir), str(tmp_path / "last_model.pt")),
                          load_tokenizer(str(tiny_model_dir)), device="cpu")
    lengths = [r["answer_length"] for r in rows]
    want = length_weighted_tau(scorer.score([r["prompt"] for r in rows]), lengths,
                               cap=float(np.percentile(lengths, 98)))
    assert weighted[-1] == pytest.approx(want, abs=1e-6)
