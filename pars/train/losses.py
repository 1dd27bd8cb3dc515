"""The training losses (`--loss`), all on the same encoder, batches and budget:

  margin          the original's pairwise margin ranking loss, over a batch's pairs whose lengths differ by at
                  least δ (--similarity-threshold), optionally weighted per pair (--pair-weighting)
  listmle         ListMLE (Xia et al. 2008) over each batch ordered by true length, longest first: the
                  likelihood of that permutation under the Plackett-Luce model of the scores (as vllm-ltr
                  trains its OPT predictors)
  pointwise       regression of the score on the standardized log length, mean squared error (as length
                  predictors like S3 and SSJF's proxy model fit the length itself)
  classification  cross-entropy over length buckets of equal train frequency (vllm-ltr's class baseline);
                  the ranker's score is then the expected bucket under its softmax (pars.model.ranker)

A higher score means a longer answer under every loss, so serving is the same for all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

LOSSES = ("margin", "listmle", "pointwise", "classification")
PAIR_LOSSES = ("margin",)  # the losses the δ filter and pair weighting apply to


def in_batch_pairs(lengths: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pair (i < j) of a batch whose relative length difference |a - b| / max(a, b) is at least the
    threshold (a pair of two zero lengths differs by 0).

    Returns index tensors (i, j) and the MarginRankingLoss target (+1 when row i is longer), so the
    same loss as the pair files applies to all of the batch's usable pairs at once.
    """
    i, j = torch.triu_indices(len(lengths), len(lengths), offset=1, device=lengths.device)
    la, lb = lengths[i], lengths[j]
    longest = torch.maximum(la, lb)
    diff = torch.where(longest > 0, (la - lb).abs() / longest.clamp(min=1e-12), torch.zeros_like(la))
    keep = diff >= threshold
    return i[keep], j[keep], torch.where(la[keep] > lb[keep], 1.0, -1.0)


def pair_weights(lengths: torch.Tensor, i: torch.Tensor, j: torch.Tensor, cap: float) -> torch.Tensor:
    """Each pair's weight for `--pair-weighting length-diff`: the difference of its two lengths, each capped
    at `cap`, over the mean of those differences (so the loss keeps the unweighted loss's scale).

    Why: of two jobs that wait together, running the longer one first costs the shorter one the difference
    in service time, so a misordered pair matters in proportion to that difference, not by its ratio."""
    capped = lengths.float().clamp(max=cap)
    diff = (capped[i] - capped[j]).abs()
    mean = diff.mean()
    return diff / mean if mean > 0 else torch.ones_like(diff)


def weighted_margin_loss(score_a: torch.Tensor, score_b: torch.Tensor, target: torch.Tensor,
                         weights: torch.Tensor, margin: float) -> torch.Tensor:
    """MarginRankingLoss with a weight per pair: mean of weight * max(0, -target * (a - b) + margin)."""
    return (weights * (margin - target * (score_a - score_b)).clamp(min=0)).mean()


def listmle_loss(scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """ListMLE of one list: -log P(longest-first order | scores) under Plackett-Luce, over the list's size,
    i.e. the mean over positions k of  logsumexp(s[π_k..π_n]) - s[π_k],  π sorting by length, longest first.

    Equal lengths keep their order in the batch (a stable sort): batches are shuffled, so that is a random
    tie-break, and the same one on every rank (each computes the loss over the gathered batch)."""
    order = torch.sort(lengths, descending=True, stable=True).indices
    ranked = scores[order].float()
    # logsumexp over each suffix: a cumulative logsumexp of the reversed list, reversed back
    suffix = torch.logcumsumexp(ranked.flip(0), dim=0).flip(0)
    return (suffix - ranked).mean()


def log_length_stats(lengths: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation of log(1 + length) over the train rows: the pointwise loss's scale."""
    logs = np.log1p(np.asarray(lengths, dtype=float))
    std = float(logs.std())
    return float(logs.mean()), std if std > 0 else 1.0


def pointwise_loss(scores: torch.Tensor, lengths: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Mean squared error between the scores and the standardized log lengths, (log(1 + length) - mean) / std."""
    target = (torch.log1p(lengths.float()) - mean) / std
    return F.mse_loss(scores.float(), target)


def bucket_edges(lengths: Sequence[float], num_buckets: int) -> list[float]:
    """The num_buckets - 1 inner edges of buckets of equal frequency over the train rows' lengths."""
    qs = np.arange(1, num_buckets) / num_buckets
    return [float(x) for x in np.quantile(np.asarray(lengths, dtype=float), qs)]


def buckets_of(lengths: torch.Tensor, edges: Sequence[float]) -> torch.Tensor:
    """Each length's bucket, 0 .. len(edges): the number of edges at or below it."""
    return torch.bucketize(lengths.float(), torch.tensor(edges, dtype=torch.float32, device=lengths.device),
                           right=True)


def classification_loss(logits: torch.Tensor, lengths: torch.Tensor, edges: Sequence[float]) -> torch.Tensor:
    """Cross-entropy of the head's logits (one per bucket) against each row's length bucket."""
    return F.cross_entropy(logits.float(), buckets_of(lengths, edges))

