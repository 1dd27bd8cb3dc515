"""`--loss margin|listmle|pointwise|classification` (pars/train/losses.py): each loss checked against a direct
computation on small tensors, each trained on the tiny encoder's separable rows (a few steps lower it), its
checkpoint loaded and served as any other; the δ filter keeps exactly the pairs it should."""

from __future__ import annotations

import itertools
import json
import math

import httpx
import numpy as np
import pytest
import torch
from serving_helpers import start_server, wait_ready

from pars.common.errors import PARSError
from pars.model.checkpoint import load_ranker
from pars.model.export import export
from pars.model.ranker import expected_bucket, load_tokenizer
from pars.model.ranker_config import read_ranker_config
from pars.model.scoring import PromptScorer
from pars.train import loop as train
from pars.train.losses import (
    bucket_edges,
    buckets_of,
    classification_loss,
    in_batch_pairs,
    listmle_loss,
    log_length_stats,
    pointwise_loss,
)
from tests.test_train import train_args

# ---- each loss against a direct computation ---------------------------------------------------------------


def test_listmle_is_the_plackett_luce_likelihood_of_the_longest_first_order():
    scores = torch.tensor([0.3, -1.2, 2.0, 0.7])
    lengths = torch.tensor([40.0, 5.0, 900.0, 40.0])  # a tie: rows 0 and 3 keep their batch order
    order = [2, 0, 3, 1]
    direct = 0.0
    for k in range(len(order)):
        rest = [scores[i].item() for i in order[k:]]
        direct += math.log(sum(math.exp(s) for s in rest)) - scores[order[k]].item()
    assert listmle_loss(scores, lengths).item() == pytest.approx(direct / 4, rel=1e-6)
    # the same probability by enumerating all 24 permutations: it is one of a distribution
    def prob(perm):
        p, left = 1.0, list(perm)
        for i in perm:
            p *= math.exp(scores[i].item()) / sum(math.exp(scores[j].item()) for j in left)
            left.remove(i)
        return p
    assert sum(prob(p) for p in itertools.permutations(range(4))) == pytest.approx(1.0)
    assert listmle_loss(scores, lengths).item() == pytest.approx(-math.log(prob(order)) / 4, rel=1e-6)
    # scores in the length order score a lower loss than the reverse
    good = torch.tensor([1.0, 0.0, 3.0, 2.0])
    lengths = torch.tensor([2.0, 1.0, 4.0, 3.0])
    assert listmle_loss(good, lengths) < listmle_loss(-good, lengths)


def test_pointwise_regresses_on_the_standardized_log_length():
    lengths = [10.0, 100.0, 1000.0]
    mean, std = log_length_stats(lengths)
    logs = np.log1p(lengths)
    assert (mean, std) == pytest.approx((logs.mean(), logs.std()))
    target = torch.tensor((logs - mean) / std, dtype=torch.float32)
    assert pointwise_loss(target, torch.tensor(lengths), mean, std).item() == pytest.approx(0.0, abs=1e-6)
    scores = torch.tensor([0.0, 0.5, -1.0])
    assert pointwise_loss(scores, torch.tensor(lengths), mean, std).item() == pytest.approx(
        float(((scores - target) ** 2).mean()), rel=1e-6)
    assert log_length_stats([5.0, 5.0]) == (pytest.approx(math.log(6.0)), 1.0)  # no spread: unit scale


def test_classification_buckets_and_the_expected_bucket():
    lengths = list(range(1, 101))
    edges = bucket_edges(lengths, 4)
    assert edges == pytest.approx([25.75, 50.5, 75.25])  # numpy's quantiles: equal frequency
    got = buckets_of(torch.tensor([1.0, 25.0, 26.0, 50.5, 100.0, 1e6]), edges).tolist()
    assert got == [0, 0, 1, 2, 3, 3]  # an edge belongs to the bucket above it
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0], [3.0, 0.0, 0.0, 0.0]])
    probs = torch.softmax(logits, dim=-1)
    assert expected_bucket(logits).tolist() == pytest.approx((probs * torch.arange(4.0)).sum(-1).tolist())
    loss = classification_loss(logits, torch.tensor([60.0, 1.0]), edges)
    direct = -(math.log(probs[0, 2]) + math.log(probs[1, 0])) / 2
    assert loss.item() == pytest.approx(direct, rel=1e-6)


@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.2, 0.3, 0.5])
def test_the_delta_filter_keeps_exactly_the_pairs_it_should(threshold):
    lengths = torch.tensor([100.0, 80.0, 70.0, 100.0, 50.0, 0.0, 0.0])
    i, j, target = in_batch_pairs(lengths, threshold)
    got = {(a, b, t) for a, b, t in zip(i.tolist(), j.tolist(), target.tolist(), strict=True)}
    want = set()
    for a, b in itertools.combinations(range(len(lengths)), 2):
        la, lb = lengths[a].item(), lengths[b].item()
        diff = abs(la - lb) / max(la, lb) if max(la, lb) > 0 else 0.0
        if diff >= threshold:
            want.add((a, b, 1.0 if la > lb else -1.0))
    assert got == want
    if threshold > 0:  # equal lengths never pass a positive δ; 100 vs 80 differ by exactly 0.2
        assert (0, 3, -1.0) not in got
        assert ((0, 1, 1.0) in got) == (threshold <= 0.2)


# ---- each loss trains, records itself, loads and serves -----------------------------------------------------


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tiny_data, tmp_path_factory):
    """One short in-batch run per loss on the tiny encoder (separable rows: 'long' prompts, long answers)."""
    out = {}
    for loss in ("margin", "listmle", "pointwise", "classification"):
        d = tmp_path_factory.mktemp(loss)
        args = train_args(tiny_model_dir, tiny_data, d, "--pairing", "in-batch", "--num-epochs", "12",
                          "--learning-rate", "3e-3", "--loss", loss, "--num-buckets", "4", "--seed", "3")
        assert train.main(args) == 0
        out[loss] = d
    return out


@pytest.mark.parametrize("loss", ["margin", "listmle", "pointwise", "classification"])
def test_each_loss_lowers_learns_and_records_itself(runs, tiny_model_dir, tiny_data, loss):
    metrics = json.loads((runs[loss] / "metrics.json").read_text())
    history = metrics["history"]
    # 36 steps lower it (the tiny random encoder already orders these val pairs well: no gain asked there)
    assert history[-1]["train_loss"] < 0.85 * history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.7
    assert metrics["loss"] == loss and read_ranker_config(runs[loss] / "best_model.pt").loss == loss
    if loss == "classification":
        rows = json.loads((tiny_data / "train_data.json").read_text())
        assert metrics["num_buckets"] == 4
        assert metrics["bucket_edges"] == pytest.approx(bucket_edges([r["answer_length"] for r in rows], 4))
    if loss == "pointwise":
        assert len(metrics["log_length_stats"]) == 2
    # the checkpoint loads as any ranker (the head's size from its weights), and scores longer = higher
    ranker = load_ranker(str(tiny_model_dir), runs[loss] / "best_model.pt")
    assert ranker.num_classes == (4 if loss == "classification" else 1)
    scorer = PromptScorer(ranker, load_tokenizer(str(tiny_model_dir)), device="cpu")
    long, short = scorer.score(["write a long detailed essay about rome", "give a one word answer yes no"])
    assert long > short
    if loss == "classification":
        assert 0.0 <= short < long <= 3.0  # expected buckets


def test_a_classification_ranker_is_served_like_any_other(runs, tiny_model_dir):
    ckpt = runs["classification"] / "best_model.pt"
    scorer = PromptScorer.from_checkpoint(str(ckpt), device="cpu", model_name=str(tiny_model_dir))
    prompts = ["write a long detailed essay about rome", "give a one word answer yes no"]
    proc, url = start_server({"PREDICTOR_MODEL_PATH": str(ckpt), "PREDICTOR_DEVICE": "cpu",
                              "PREDICTOR_NUM_THREADS": "1"})
    try:
        wait_ready(proc, url)
        got = httpx.post(url + "/score_batch", json={"prompts": prompts}, timeout=30).json()["scores"]
        assert got == pytest.approx(scorer.score(prompts), abs=1e-5)
        assert httpx.get(url + "/").json()["ranker"]["loss"] == "classification"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_classification_ranker_is_refused_by_export(runs, tmp_path):
    ckpt = runs["classification"] / "best_model.pt"
    with pytest.raises(PARSError, match="classification ranker .4 length buckets. .*serve the checkpoint"):
        export(str(ckpt), tmp_path / "out", read_ranker_config(ckpt))
    assert not (tmp_path / "out").exists()


def test_loss_flags_are_checked_in_one_line(runs, tiny_model_dir, tiny_data, tmp_path):
    with pytest.raises(PARSError, match="--loss listmle .* --pairing in-batch"):
        train.main(train_args(tiny_model_dir, tiny_data, tmp_path, "--loss", "listmle"))
    with pytest.raises(PARSError, match="--pair-weighting weighs pairs of the margin loss"):
        train.main(train_args(tiny_model_dir, tiny_data, tmp_path, "--pairing", "in-batch", "--loss", "pointwise",
                              "--pair-weighting", "length-diff"))
    with pytest.raises(PARSError, match="--num-buckets must be >= 2"):
        train.main(train_args(tiny_model_dir, tiny_data, tmp_path, "--pairing", "in-batch", "--loss",
                              "classification", "--num-buckets", "1"))
    # fine-tuning keeps the head: a one-output ranker cannot continue as a 4-bucket one
    with pytest.raises(PARSError, match="head of 1 output.* one of 4"):
        train.main(train_args(tiny_model_dir, tiny_data, tmp_path, "--pairing", "in-batch", "--loss",
                              "classification", "--num-buckets", "4", "--resume-from",
                              str(runs["margin"] / "best_model.pt")))
