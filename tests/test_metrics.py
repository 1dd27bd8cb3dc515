"""Ranking metrics against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from pars.eval.rank_metrics import kendall_tau, pairwise_accuracy, spearman_rho


def test_kendall_tau_perfect_and_reversed_order():
    lengths = [5, 50, 500, 5000, 50000]
    assert kendall_tau([0.1, 0.2, 0.3, 0.4, 0.5], lengths) == pytest.approx(1.0)
    assert kendall_tau([0.5, 0.4, 0.3, 0.2, 0.1], lengths) == pytest.approx(-1.0)
    # Only the order counts, not the scale.
    assert kendall_tau([-3.0, 0.0, 1.0, 7.0, 100.0], lengths) == pytest.approx(1.0)


def test_kendall_tau_one_discordant_pair():
    # 6 pairs: (b, c) swapped, the other 5 agree: (5 - 1) / 6.
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)


def test_kendall_tau_b_with_ties_on_both_sides():
    # Pairs: (1,2) (1,3) (1,4) (2,4) concordant; (2,3) tied in scores only; (3,4) tied in lengths only.
    # tau-b = (C - D) / sqrt((n0 - ties_scores) * (n0 - ties_lengths)) = 4 / sqrt(5 * 5) = 0.8.
    # (tau-a would give 4 / 6: tau-b must not count tied pairs against the predictor.)
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)


def test_kendall_tau_ties_in_scores_only():
    # C = 5, D = 0, one tie in scores: 5 / sqrt((6 - 1) * 6) = 5 / sqrt(30).
    assert kendall_tau([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(5 / math.sqrt(30))


@pytest.mark.parametrize("scores, lengths", [([], []), ([1.0], [10])])
def test_fewer_than_two_items_is_nan(scores, lengths):
    assert math.isnan(kendall_tau(scores, lengths))
    assert math.isnan(spearman_rho(scores, lengths))


def test_constant_scores_give_nan_not_a_number_that_looks_real():
    assert math.isnan(kendall_tau([0.3, 0.3, 0.3], [1, 2, 3]))


def test_spearman_rho_basics():
    assert spearman_rho([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman_rho([4, 3, 2, 1], [10, 20, 30, 40]) == pytest.approx(-1.0)
    # Rank differences (0, 1, -1, 0): 1 - 6 * 2 / (4 * (16 - 1)) = 0.8.
    assert spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # Monotone but not linear: still 1 (ranks, not values).
    assert spearman_rho([1, 2, 3, 4], [1, 10, 1000, 10**6]) == pytest.approx(1.0)


def test_pairwise_accuracy_hand_made_case():
    scores_a = [3.0, 1.0, 2.0, 2.0, 0.5]
    scores_b = [1.0, 2.0, 2.0, 0.0, 0.4]
    labels = [1, 0, 1, 0, 1]
    # 1: 3 > 1, label 1 -> right. 2: 1 < 2, label 0 -> right. 3: tie counts as "B longer", label 1 -> wrong.
    # 4: 2 > 0 but label 0 -> wrong. 5: 0.5 > 0.4, label 1 -> right.
    assert pairwise_accuracy(scores_a, scores_b, labels) == pytest.approx(3 / 5)


def test_pairwise_accuracy_extremes_and_errors():
    assert pairwise_accuracy([2, 2], [1, 1], [1, 1]) == 1.0
    assert pairwise_accuracy([2, 2], [1, 1], [0, 0]) == 0.0
    assert math.isnan(pairwise_accuracy([], [], []))
    with pytest.raises(ValueError):
        pairwise_accuracy([1.0, 2.0], [0.0], [1, 1])


def test_kendall_tau_difference_paired_bootstrap():
    import random

    from pars.eval.rank_metrics import kendall_tau_difference

    rng = random.Random(0)
    lengths = [rng.random() for _ in range(200)]
    perfect = list(lengths)
    noisy = [v + rng.gauss(0, 1.0) for v in lengths]
    better = kendall_tau_difference(perfect, noisy, lengths, n_resamples=200)
    assert better["difference"] > 0 and better["ci95_low"] > 0
    assert better["ci95_low"] <= better["difference"] <= better["ci95_high"]
    same = kendall_tau_difference(noisy, noisy, lengths, n_resamples=200)
    assert same["difference"] == 0 and same["ci95_low"] == 0 and same["ci95_high"] == 0
    worse = kendall_tau_difference(noisy, perfect, lengths, n_resamples=200)
    assert worse["ci95_high"] < 0
