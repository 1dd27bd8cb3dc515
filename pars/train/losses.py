"""The training losses: the margin ranking loss, optionally weighted per pair, and the in-batch pairs it is
taken over.
"""

from __future__ import annotations

import torch


def in_batch_pairs(lengths: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pair (i < j) of a batch whose relative length difference passes the threshold.

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
