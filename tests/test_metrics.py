"""Metric values checked against hand computations (written out in comments) and brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from downstream.metrics import (
    accuracy,
    average_precision,
    d_prime,
    fold_average_select_epoch,
    fold_mean_std,
    mean_auc,
    mean_average_precision,
    multilabel_summary,
    per_class_ap,
    roc_auc,
)


# ----------------------------------------------------------------------------------------------------------
# Brute-force references: the textbook definitions, one loop per threshold / pair
# ----------------------------------------------------------------------------------------------------------
def _ap_by_thresholds(scores, targets):
    """sum over distinct thresholds t (high to low) of (R(t) - R(previous t)) * P(t)."""
    n_pos = sum(targets)
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        chosen = [y for s, y in zip(scores, targets, strict=True) if s >= t]
        recall = sum(chosen) / n_pos
        ap += (recall - prev_recall) * sum(chosen) / len(chosen)
        prev_recall = recall
    return ap


def _auc_by_pairs(scores, targets):
    pos = [s for s, y in zip(scores, targets, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, targets, strict=True) if y == 0]
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg) / (len(pos) * len(neg))


# ----------------------------------------------------------------------------------------------------------
# Average precision
# ----------------------------------------------------------------------------------------------------------
def test_ap_hand_example():
    # Ranked: 0.9 (+) P=1/1, R=1/2 | 0.8 (-) | 0.7 (+) P=2/3, R=2/2 | 0.6 (-)
    # AP = (1/2)(1) + (1/2)(2/3) = (1/1 + 2/3) / 2 = 5/6
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6)


def test_ap_groups_tied_scores():
    # 0.9 (+): P = 1, R = 1/2. The tie at 0.8 is one threshold holding one + and one -: at it TP = 2,
    # FP = 1, so P = 2/3, R = 1. AP = (1/2)(1) + (1/2)(2/3) = 5/6, whichever tied sample comes first
    # (ranking the tied positive first, without grouping, would give 1).
    assert average_precision([0.9, 0.8, 0.8, 0.1], [1, 1, 0, 0]) == pytest.approx(5 / 6)
    assert average_precision([0.9, 0.8, 0.8, 0.1], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    # All scores tied: one threshold with P = 2/4 and R = 1 -> AP = 1/2.
    assert average_precision([0.5] * 4, [1, 0, 1, 0]) == pytest.approx(0.5)


def test_ap_perfect_and_no_positive():
    assert average_precision([0.3, 0.2, 0.1], [1, 1, 0]) == pytest.approx(1.0)
    assert math.isnan(average_precision([0.3, 0.2, 0.1], [0, 0, 0]))


def test_ap_matches_threshold_definition_on_random_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = rng.integers(0, 5, size=30).astype(float) / 4  # few distinct values: many ties
        targets = rng.integers(0, 2, size=30)
        targets[0] = 1
        expected = _ap_by_thresholds(list(scores), list(targets))
        assert average_precision(scores, targets) == pytest.approx(expected)


def test_map_skips_classes_without_positives():
    # class 0: the hand example above, AP = 5/6; class 1: perfectly ranked, AP = 1; class 2: no positive.
    scores = np.array([[0.9, 0.9, 0.1], [0.8, 0.1, 0.2], [0.7, 0.8, 0.3], [0.6, 0.2, 0.4]])
    targets = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 0], [0, 0, 0]])
    ap = per_class_ap(scores, targets)
    assert ap[:2] == pytest.approx([5 / 6, 1.0])
    assert math.isnan(ap[2])
    # mAP = (5/6 + 1) / 2 = 11/12 over the 2 classes with positives (counting class 2 as 0 would give 11/18).
    assert mean_average_precision(scores, targets) == pytest.approx(11 / 12)
    summary = multilabel_summary(torch.tensor(scores), torch.tensor(targets))
    assert summary["mAP"] == pytest.approx(11 / 12)
    assert summary["num_classes"] == 3 and summary["num_classes_skipped_ap"] == 1


# ----------------------------------------------------------------------------------------------------------
# ROC AUC and d'
# ----------------------------------------------------------------------------------------------------------
def test_auc_hand_example_with_ties():
    # positives {0.9, 0.8}, negatives {0.8, 0.1}; pairs: (0.9 > 0.8) 1, (0.9 > 0.1) 1, (0.8 = 0.8) 1/2,
    # (0.8 > 0.1) 1 -> AUC = 3.5 / 4 = 0.875.
    assert roc_auc([0.9, 0.8, 0.8, 0.1], [1, 0, 1, 0]) == pytest.approx(0.875)
    assert roc_auc([0.5] * 4, [1, 0, 1, 0]) == pytest.approx(0.5)  # all tied: every pair 1/2
    assert roc_auc([0.1, 0.2, 0.9], [1, 1, 0]) == pytest.approx(0.0)
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))


def test_auc_matches_pair_count_on_random_ties():
    rng = np.random.default_rng(1)
    for _ in range(20):
        scores = rng.integers(0, 4, size=25).astype(float)
        targets = rng.integers(0, 2, size=25)
        targets[:2] = [0, 1]
        assert roc_auc(scores, targets) == pytest.approx(_auc_by_pairs(list(scores), list(targets)))


def test_mean_auc_skips_undefined_classes():
    # class 0: 0.875 (above); class 1: perfect, 1.0; class 2: all positive, undefined -> mean (0.875 + 1) / 2.
    scores = np.array([[0.9, 0.9, 0.1], [0.8, 0.1, 0.2], [0.8, 0.8, 0.3], [0.1, 0.2, 0.4]])
    targets = np.array([[1, 1, 1], [0, 0, 1], [1, 1, 1], [0, 0, 1]])
    assert mean_auc(scores, targets) == pytest.approx(0.9375)


def test_d_prime():
    assert d_prime(0.5) == 0.0
    # Phi(1) = 0.8413447460685429, so d' = sqrt(2) * 1.
    assert d_prime(0.8413447460685429) == pytest.approx(math.sqrt(2))
    assert d_prime(0.1) == pytest.approx(-d_prime(0.9))
    assert d_prime(1.0) == math.inf and d_prime(0.0) == -math.inf
    assert math.isnan(d_prime(math.nan))
    with pytest.raises(ValueError, match="1.5"):
        d_prime(1.5)


# ----------------------------------------------------------------------------------------------------------
# Accuracy and aggregation
# ----------------------------------------------------------------------------------------------------------
def test_accuracy():
    logits = [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0, 1.0]]
    # argmax -> [0, 1, 0, 2] vs targets [0, 1, 2, 2]: 3 of 4 right.
    assert accuracy(logits, [0, 1, 2, 2]) == pytest.approx(0.75)
    # The same with one-hot targets, and with predicted indices instead of logits.
    assert accuracy(torch.tensor(logits), torch.eye(3)[[0, 1, 2, 2]]) == pytest.approx(0.75)
    assert accuracy(np.array([0, 1, 0, 2]), np.array([0, 1, 2, 2])) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="shapes"):
        accuracy([0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])


def test_fold_mean_std_uses_sample_std():
    # mean 0.9; squared deviations 0.01, 0, 0.01; sample variance 0.02 / (3 - 1) = 0.01 -> std 0.1.
    mean, std = fold_mean_std([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9) and std == pytest.approx(0.1)
    assert fold_mean_std([0.7]) == (pytest.approx(0.7), 0.0)
    with pytest.raises(ValueError):
        fold_mean_std([])


def test_fold_average_select_epoch_uses_fold_averaged_curve():
    curves = [
        [0.50, 0.70, 0.80, 0.75],  # fold 1: its own best is epoch index 2
        [0.60, 0.90, 0.70, 0.80],  # fold 2: its own best is epoch index 1
    ]
    # fold mean per epoch: [0.55, 0.80, 0.75, 0.775] -> epoch index 1, mean 0.80 (per-fold bests would
    # report the optimistic (0.80 + 0.90) / 2 = 0.85).
    epoch, acc = fold_average_select_epoch(curves)
    assert epoch == 1 and acc == pytest.approx(0.80)
    # Ties go to the first epoch, as np.argmax.
    assert fold_average_select_epoch([[0.5, 0.6, 0.6]]) == (1, pytest.approx(0.6))
    with pytest.raises(ValueError, match="NaN"):
        fold_average_select_epoch([[0.5, float("nan")]])
    with pytest.raises(ValueError, match="shape"):
        fold_average_select_epoch([0.5, 0.6])
