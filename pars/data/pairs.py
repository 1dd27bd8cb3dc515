"""Pairwise training data: the original release's pairing rule, reproduced exactly.

Given the same rows and seed, `make_pairs` returns the same list, element for element, as
the original `make_pairs` in SPEAR-UIC/PARS (same RNG calls in the same order), so that
users can reproduce the paper's data.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from pars.common.errors import PARSError


def relative_length_diff(len_a: float, len_b: float) -> float:
    """|la - lb| / max(la, lb), and 0 when both lengths are 0."""
    longest = max(len_a, len_b)
    return abs(len_a - len_b) / longest if longest > 0 else 0.0


def check_threshold(threshold: float) -> None:
    if not 0.0 <= threshold < 1.0:
        raise PARSError(f"--similarity-threshold must be in [0, 1), got {threshold}")


def make_pairs(
    rows: Sequence[dict[str, Any]],
    num_pairs_per_sample: int,
    similarity_threshold: float,
    seed: int,
    *,
    desc: str = "Generating pairs",
) -> list[dict[str, Any]]:
    """Draw up to `num_pairs_per_sample` partners for every row.

    For row i, partners j are drawn uniformly with `random.Random(seed)`; j == i is skipped; a
    pair is kept only when the relative length difference is at least the threshold; at most
    10 x num_pairs_per_sample draws are made per row. `label` is 1 when prompt_A's answer is
    strictly longer.
    """
    rng = random.Random(seed)
    pairs: list[dict[str, Any]] = []
    n = len(rows)
    max_attempts = 10 * num_pairs_per_sample
    for i, sample_a in enumerate(tqdm(rows, total=n, desc=desc, leave=False)):
        generated = 0
        attempts = 0
        while generated < num_pairs_per_sample and attempts < max_attempts:
            attempts += 1
            j = rng.randint(0, n - 1)
            if i == j:
                continue
            sample_b = rows[j]
            len_a = sample_a["answer_length"]
            len_b = sample_b["answer_length"]
            if relative_length_diff(len_a, len_b) < similarity_threshold:
                continue
            pairs.append(
                {
                    "prompt_A": sample_a["prompt"],
                    "prompt_B": sample_b["prompt"],
                    "label": 1 if len_a > len_b else 0,
                }
            )
            generated += 1
    return pairs


def pair_file_name(split: str, threshold: float) -> str:
    """`train_pairs_length_diff_0.2.json`: the threshold is formatted as Python prints a float."""
    return f"{split}_pairs_length_diff_{threshold}.json"
