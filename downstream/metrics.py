"""Downstream metrics as pure functions over arrays.

Definitions follow the code that produced the papers' numbers, so that our tables are comparable:

* ``accuracy``: top-1 over samples, not class-averaged (SSAST ``src/run.py``; s3prl ``downstream/*/expert.py``
  ``records["acc"]``).
* ``average_precision`` / ``mean_average_precision``: scikit-learn's ``average_precision_score`` (step-wise
  sum ``sum_k (R_k - R_{k-1}) P_k`` over distinct score thresholds, no interpolation), averaged over classes
  as ``np.mean([stat['AP'] ...])`` in SSAST ``src/utilities/stats.py``.
* ``roc_auc`` / ``mean_auc`` / ``d_prime``: scikit-learn's ``roc_auc_score`` (tied scores earn half credit)
  and AST's ``d_prime(auc) = sqrt(2) * Phi^-1(auc)`` computed from the mean AUC.
* ``esc50_select_epoch``: SSAST ``src/finetune/esc50/get_esc_result.py``: one epoch for all folds, the argmax
  of the fold-averaged test-accuracy curve.

Classes without positives (or, for AUC, without negatives) have no defined AP/AUC. scikit-learn returns 0 AP
with a warning (and raises for AUC); we return NaN per class and average over the classes where the metric is
defined. On the AudioSet eval set every one of the 527 classes has positives, so this matches SSAST there; on
a subset it avoids scoring absent classes as 0. ``multilabel_summary`` reports how many classes were skipped.

Every function accepts numpy arrays, torch tensors or nested sequences.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "average_precision",
    "per_class_ap",
    "mean_average_precision",
    "roc_auc",
    "per_class_auc",
    "mean_auc",
    "d_prime",
    "multilabel_summary",
    "fold_mean_std",
    "esc50_select_epoch",
    "esc50_select_runs",
]


def _to_numpy(x: Any) -> np.ndarray:
    """Array view of a numpy array, torch tensor (any device) or sequence."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _binary_targets(targets: Any, name: str = "targets") -> np.ndarray:
    y = _to_numpy(targets)
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name} must be binary (0/1), got values {np.unique(y)[:10].tolist()}")
    return y.astype(np.float64)


def _finite_scores(scores: Any) -> np.ndarray:
    s = _to_numpy(scores).astype(np.float64)
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf; check the model outputs before scoring")
    return s


# ----------------------------------------------------------------------------------------------------------
# Classification accuracy
# ----------------------------------------------------------------------------------------------------------
def accuracy(logits_or_pred: Any, targets: Any) -> float:
    """Top-1 accuracy over samples.

    Args:
        logits_or_pred: ``(N, C)`` scores/logits (argmax is taken) or ``(N,)`` predicted class indices.
        targets: ``(N,)`` class indices, or ``(N, C)`` one-hot / soft targets (argmax is taken, as SSAST does
            for its BCE-trained Speech Commands model).

    Returns:
        Fraction of samples whose prediction equals the target, in [0, 1].
    """
    pred = _to_numpy(logits_or_pred)
    true = _to_numpy(targets)
    if pred.ndim == 2:
        pred = pred.argmax(axis=-1)
    if true.ndim == 2:
        true = true.argmax(axis=-1)
    if pred.ndim != 1 or true.ndim != 1 or pred.shape != true.shape:
        raise ValueError(
            "accuracy expects (N,) or (N, C) inputs with the same N, got shapes "
            f"{_to_numpy(logits_or_pred).shape} and {_to_numpy(targets).shape}"
        )
    if pred.size == 0:
        raise ValueError("accuracy of an empty batch is undefined")
    return float((pred == true).mean())


# ----------------------------------------------------------------------------------------------------------
# Average precision (scikit-learn ``average_precision_score``)
# ----------------------------------------------------------------------------------------------------------
def average_precision(scores: Any, targets: Any) -> float:
    """Average precision of one binary problem, equal to scikit-learn's ``average_precision_score``.

    ``AP = sum_k (R_k - R_{k-1}) * P_k`` over the distinct score thresholds in decreasing order. Samples with
    tied scores form one threshold, so the order of tied samples cannot change the result.

    Args:
        scores: ``(N,)`` real-valued scores, higher = more likely positive.
        targets: ``(N,)`` binary labels.

    Returns:
        AP in [0, 1], or NaN when ``targets`` has no positive (scikit-learn returns 0 with a warning).
    """
    s = _finite_scores(scores)
    y = _binary_targets(targets)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"average_precision expects two (N,) arrays, got shapes {s.shape} and {y.shape}")
    n_pos = y.sum()
    if n_pos == 0:
        return math.nan
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # Index of the last sample of each group of equal scores: one threshold per distinct score.
    ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps = np.cumsum(y)[ends]
    precision = tps / (ends + 1)
    recall_step = np.diff(np.r_[0.0, tps]) / n_pos
    return float(np.sum(recall_step * precision))


def per_class_ap(scores: Any, targets: Any) -> np.ndarray:
    """Average precision per class.

    Args:
        scores: ``(N, C)`` scores.
        targets: ``(N, C)`` multi-hot labels.

    Returns:
        ``(C,)`` float64 array; NaN for classes with no positive in ``targets``.
    """
    s, y = _to_numpy(scores), _to_numpy(targets)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"per_class_ap expects two (N, C) arrays, got shapes {s.shape} and {y.shape}")
    return np.array([average_precision(s[:, c], y[:, c]) for c in range(s.shape[1])], dtype=np.float64)


def mean_average_precision(scores: Any, targets: Any) -> float:
    """mAP: mean of the per-class APs over the classes that have at least one positive.

    Args:
        scores: ``(N, C)`` scores.
        targets: ``(N, C)`` multi-hot labels.

    Returns:
        The mean AP; NaN if no class has a positive. ``multilabel_summary`` also reports the skipped count.
    """
    ap = per_class_ap(scores, targets)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else math.nan


# ----------------------------------------------------------------------------------------------------------
# ROC AUC and d-prime
# ----------------------------------------------------------------------------------------------------------
def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    stops = np.r_[starts[1:], x.size]
    ranks = np.empty(x.size, dtype=np.float64)
    # The ranks starts+1 .. stops average to (starts + 1 + stops) / 2.
    ranks[order] = np.repeat((starts + 1 + stops) / 2.0, stops - starts)
    return ranks


def roc_auc(scores: Any, targets: Any) -> float:
    """Area under the ROC curve, equal to scikit-learn's ``roc_auc_score`` for binary targets.

    Computed as the Mann-Whitney statistic: the fraction of (positive, negative) pairs ranked correctly, a
    tied pair counting 1/2 (the trapezoid rule over the ROC curve gives the same value).

    Args:
        scores: ``(N,)`` scores.
        targets: ``(N,)`` binary labels.

    Returns:
        AUC in [0, 1], or NaN when ``targets`` lacks positives or negatives (scikit-learn raises).
    """
    s = _finite_scores(scores)
    y = _binary_targets(targets)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"roc_auc expects two (N,) arrays, got shapes {s.shape} and {y.shape}")
    n_pos = y.sum()
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = _average_ranks(s)[y == 1].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def per_class_auc(scores: Any, targets: Any) -> np.ndarray:
    """ROC AUC per class of ``(N, C)`` scores and multi-hot targets; NaN where a class is all-0 or all-1."""
    s, y = _to_numpy(scores), _to_numpy(targets)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"per_class_auc expects two (N, C) arrays, got shapes {s.shape} and {y.shape}")
    return np.array([roc_auc(s[:, c], y[:, c]) for c in range(s.shape[1])], dtype=np.float64)


def mean_auc(scores: Any, targets: Any) -> float:
    """Mean ROC AUC over the classes where it is defined (both positives and negatives present)."""
    auc = per_class_auc(scores, targets)
    return float(np.nanmean(auc)) if np.isfinite(auc).any() else math.nan


def d_prime(auc: float) -> float:
    """Sensitivity index from an AUC: ``sqrt(2) * Phi^-1(auc)`` (AST/PSLA ``d_prime``).

    Args:
        auc: area under the ROC curve in [0, 1].

    Returns:
        d'; 0 at chance (0.5), +inf at 1, -inf at 0, NaN for NaN input.
    """
    if math.isnan(auc):
        return math.nan
    if not 0.0 <= auc <= 1.0:
        raise ValueError(f"d_prime expects an AUC in [0, 1], got {auc}")
    if auc in (0.0, 1.0):  # inv_cdf is unbounded at the ends
        return math.copysign(math.inf, auc - 0.5)
    return math.sqrt(2.0) * NormalDist().inv_cdf(auc)


def multilabel_summary(scores: Any, targets: Any) -> dict[str, float | int]:
    """The AudioSet-style summary: mAP, mean AUC and d' of the mean AUC.

    Args:
        scores: ``(N, C)`` scores.
        targets: ``(N, C)`` multi-hot labels.

    Returns:
        ``{"mAP", "mAUC", "d_prime", "num_classes", "num_classes_skipped_ap"}``; the last counts classes with
        no positive, which are left out of the mAP (see the module docstring).
    """
    ap = per_class_ap(scores, targets)
    m_auc = mean_auc(scores, targets)
    return {
        "mAP": float(np.nanmean(ap)) if np.isfinite(ap).any() else math.nan,
        "mAUC": m_auc,
        "d_prime": d_prime(m_auc),
        "num_classes": int(ap.size),
        "num_classes_skipped_ap": int(np.isnan(ap).sum()),
    }


# ----------------------------------------------------------------------------------------------------------
# Aggregation over folds / runs
# ----------------------------------------------------------------------------------------------------------
def fold_mean_std(values: Sequence[float] | Any) -> tuple[float, float]:
    """Mean and spread of per-fold (or per-seed) scores.

    The spread is the *sample* standard deviation (``ddof=1``): the folds are a sample of possible splits, and
    this is what ``np.std(..., ddof=1)`` / ``statistics.stdev`` report. With a single value it is 0.

    Args:
        values: ``(K,)`` scores, e.g. the 5 IEMOCAP fold accuracies.

    Returns:
        ``(mean, std)``.
    """
    v = _to_numpy(values).astype(np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("fold_mean_std needs at least one value")
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return float(v.mean()), std


def esc50_select_epoch(curves: Any) -> tuple[int, float]:
    """ESC-50 model selection: one epoch for all folds, chosen on the fold-averaged test-accuracy curve.

    Follows SSAST ``get_esc_result.py``: average the 5 folds' per-epoch accuracies, take the argmax epoch (the
    first one on ties, as ``np.argmax``), and report the fold mean at that epoch. Picking each fold's own best
    epoch instead would be optimistic.

    Args:
        curves: ``(folds, epochs)`` accuracies; row f is fold f's test accuracy after each epoch.

    Returns:
        ``(epoch_index, mean_accuracy)``; ``epoch_index`` is the 0-based column of ``curves`` (SSAST's
        ``result.csv`` row i holds epoch i + 1).
    """
    c = _to_numpy(curves).astype(np.float64)
    if c.ndim != 2 or c.shape[0] == 0 or c.shape[1] == 0:
        raise ValueError(f"esc50_select_epoch expects a non-empty (folds, epochs) table, got shape {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("esc50_select_epoch: the accuracy table has NaN/inf entries (missing epochs?)")
    mean_curve = c.mean(axis=0)
    best = int(np.argmax(mean_curve))
    return best, float(mean_curve[best])


def esc50_select_runs(run_dirs: Sequence[str | Path]) -> dict:
    """:func:`esc50_select_epoch` over the 5 fold runs of ``run_downstream.py -d esc50 --fold k``.

    Reads each run's ``evals.jsonl`` (one line per evaluation: ``step``, ``accuracy``; the last line wins for a
    step evaluated twice after a resume) and uses the steps every fold evaluated.

    Args:
        run_dirs: the fold runs' folders, fold 1 first.

    Returns:
        ``{"step", "mean_accuracy", "fold_accuracies", "runs"}``: the chosen step, the fold mean there, the
        per-fold accuracies at it (in ``run_dirs`` order) and the folders.
    """
    if len(run_dirs) < 2:
        raise ValueError(f"esc50 epoch selection needs the fold runs (5 for ESC-50), got {len(run_dirs)}")
    curves = []
    for d in run_dirs:
        path = Path(d) / "evals.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {d} a run_downstream.py run folder?")
        by_step = {}
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                if "accuracy" in row:
                    by_step[int(row["step"])] = float(row["accuracy"])
        curves.append(by_step)
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    if not steps:
        raise ValueError(f"the runs {[str(d) for d in run_dirs]} share no evaluated step")
    index, mean = esc50_select_epoch([[c[s] for s in steps] for c in curves])
    return {"step": steps[index], "mean_accuracy": mean, "fold_accuracies": [c[steps[index]] for c in curves],
            "runs": [str(d) for d in run_dirs]}
