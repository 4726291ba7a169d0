"""Downstream metrics as pure functions over arrays.

Definitions follow the code that produced the papers' numbers, so that our tables are comparable:

* ``accuracy``: top-1 over samples, not class-averaged (SSAST ``src/run.py``; s3prl ``downstream/*/expert.py``
  ``records["acc"]``).
* ``average_precision`` / ``mean_average_precision``: scikit-learn's ``average_precision_score`` (step-wise
  sum ``sum_k (R_k - R_{k-1}) P_k`` over distinct score thresholds, no interpolation), averaged over classes
  as ``np.mean([stat['AP'] ...])`` in SSAST ``src/utilities/stats.py``.
* ``roc_auc`` / ``mean_auc`` / ``d_prime``: scikit-learn's ``roc_auc_score`` (tied scores earn half credit)
  and AST's ``d_prime(auc) = sqrt(2) * Phi^-1(auc)`` computed from the mean AUC.
* ``class_baselines`` / ``per_class_scores`` / ``prediction_spread`` / ``evaluation_report``: what a score
  means, so a collapsed model is seen at once. The majority baseline is the accuracy, on the evaluated split,
  of always answering the most common *training* class; chance is ``1 / num_classes``. For multi-label mAP
  both are the mAP of a scorer that ranks every clip the same (all ties), i.e. each class's positive rate on
  the split, averaged over the classes with a positive: a constant per-class score (the training frequency)
  is no better than chance there.
* ``per_clip_correctness``: which clips a single-label evaluation got right, packed for its record
  (``downstream.results.per_clip`` reads it back), so paired tests between two rows need only the records.
* ``fold_average_select_epoch``: SSAST ``src/finetune/esc50/get_esc_result.py`` (ESC-50's selection, which
  ``downstream.tasks`` applies to the fold runs): one epoch for all folds, the argmax of the fold-averaged
  curve.

Classes without positives (or, for AUC, without negatives) have no defined AP/AUC. scikit-learn returns 0 AP
with a warning (and raises for AUC); we return NaN per class and average over the classes where the metric is
defined. On the AudioSet eval set every one of the 527 classes has positives, so this matches SSAST there; on
a subset it avoids scoring absent classes as 0. ``multilabel_summary`` reports how many classes were skipped.

Every function accepts numpy arrays, torch tensors or nested sequences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np

from .results import clip_ids_sha1, encode_correct

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
    "fold_average_select_epoch",
    "class_baselines",
    "per_class_scores",
    "prediction_spread",
    "per_clip_correctness",
    "collapse_warning",
    "evaluation_report",
    "COLLAPSE_SHARE",
]

# More than this fraction of the predictions on one class (which is not that common in the targets) is
# reported as a collapse: the symptom of a head or fine-tuned model that learned only the prior.
COLLAPSE_SHARE = 0.95


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


def fold_average_select_epoch(curves: Any) -> tuple[int, float]:
    """One epoch for all folds, chosen on the fold-averaged curve (ESC-50's model selection).

    Follows SSAST ``get_esc_result.py``: average the folds' per-epoch scores, take the argmax epoch (the first
    one on ties, as ``np.argmax``), and report the fold mean at that epoch. Picking each fold's own best epoch
    instead would be optimistic.

    Args:
        curves: ``(folds, epochs)`` scores; row f is fold f's test score after each epoch.

    Returns:
        ``(epoch_index, mean_score)``; ``epoch_index`` is the 0-based column of ``curves`` (SSAST's
        ``result.csv`` row i holds epoch i + 1).
    """
    c = _to_numpy(curves).astype(np.float64)
    if c.ndim != 2 or c.shape[0] == 0 or c.shape[1] == 0:
        raise ValueError(f"fold-averaged selection expects a non-empty (folds, epochs) table, "
                         f"got shape {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("fold-averaged selection: the score table has NaN/inf entries (missing epochs?)")
    mean_curve = c.mean(axis=0)
    best = int(np.argmax(mean_curve))
    return best, float(mean_curve[best])


# ----------------------------------------------------------------------------------------------------------
# What a score means: baselines, per-class scores, collapse
# ----------------------------------------------------------------------------------------------------------
def _class_indices(labels: Any, num_classes: int) -> np.ndarray:
    """``(N,)`` class indices of ``(N,)`` indices or ``(N, C)`` one-hot / scores (argmax)."""
    y = _to_numpy(labels)
    y = y.argmax(axis=-1) if y.ndim == 2 else y
    y = y.astype(np.int64).reshape(-1)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"class indices must lie in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
    return y


def _multi_hot(labels: Any, num_classes: int) -> np.ndarray:
    """``(N, C)`` multi-hot of an ``(N, C)`` array or of a list of index lists (``Clip.label`` of AS-20K)."""
    if isinstance(labels, Sequence) and not isinstance(labels, np.ndarray) and labels and \
            isinstance(labels[0], (list, tuple)):
        out = np.zeros((len(labels), num_classes), dtype=np.float64)
        for i, idx in enumerate(labels):
            out[i, list(idx)] = 1.0
        return out
    y = _to_numpy(labels).astype(np.float64)
    if y.ndim != 2 or y.shape[1] != num_classes:
        raise ValueError(f"multi-label targets must be (N, {num_classes}), got shape {y.shape}")
    return y


def class_baselines(train_labels: Any, targets: Any, num_classes: int,
                    multilabel: bool = False) -> dict[str, float | int | None]:
    """The scores a model must beat to have learned anything from the audio.

    Args:
        train_labels: the training split's labels: ``(M,)`` class indices, or for ``multilabel`` ``(M, C)``
            multi-hot or a list of index lists.
        targets: the evaluated split's labels: ``(N,)`` indices or ``(N, C)`` one-hot / multi-hot.
        num_classes: C.
        multilabel: score as mAP (AS-20K) rather than accuracy.

    Returns:
        ``{"majority", "majority_class", "chance"}``. Single-label: ``majority`` is the accuracy on the split
        of always answering ``majority_class``, the most common training class (the lowest index on ties);
        ``chance`` is ``1 / C``. Multi-label: both are the mAP of constant scores (mean positive rate over the
        classes with a positive on the split) and ``majority_class`` is None.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if multilabel:
        y = _multi_hot(targets, num_classes)
        rate = y.mean(axis=0) if y.shape[0] else np.zeros(num_classes)
        present = y.sum(axis=0) > 0
        value = float(rate[present].mean()) if present.any() else math.nan
        return {"majority": value, "majority_class": None, "chance": value}
    train = _class_indices(train_labels, num_classes)
    if train.size == 0:
        raise ValueError("class_baselines needs at least one training label")
    majority_class = int(np.bincount(train, minlength=num_classes).argmax())
    y = _class_indices(targets, num_classes)
    majority = float((y == majority_class).mean()) if y.size else math.nan
    return {"majority": majority, "majority_class": majority_class, "chance": 1.0 / num_classes}


def per_class_scores(scores: Any, targets: Any, multilabel: bool = False) -> np.ndarray:
    """Accuracy of each class (the fraction of its clips predicted as it: its recall), or its AP.

    Args:
        scores: ``(N, C)`` logits / scores.
        targets: ``(N,)`` indices or ``(N, C)`` one-hot; ``(N, C)`` multi-hot for ``multilabel``.

    Returns:
        ``(C,)`` float64; NaN for a class without clips (accuracy) or positives (AP) in ``targets``.
    """
    s = _to_numpy(scores)
    if s.ndim != 2:
        raise ValueError(f"per_class_scores expects (N, C) scores, got shape {s.shape}")
    if multilabel:
        return per_class_ap(s, targets)
    num_classes = s.shape[1]
    pred, y = s.argmax(axis=-1), _class_indices(targets, num_classes)
    if pred.shape != y.shape:
        raise ValueError(f"per_class_scores: {pred.shape[0]} predictions for {y.shape[0]} targets")
    hits = np.bincount(y, weights=(pred == y).astype(np.float64), minlength=num_classes)
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / np.maximum(counts, 1), math.nan)


def prediction_spread(scores: Any, targets: Any | None = None) -> dict[str, float | int]:
    """How the top-1 predictions spread over the classes.

    Args:
        scores: ``(N, C)`` logits / scores (top-1 = argmax, also for a multi-label model).
        targets: optional ``(N,)`` indices or ``(N, C)`` labels; gives ``target_share``.

    Returns:
        ``{"clips", "distinct", "top_class", "top_share"}``: N, the number of distinct predicted classes, the
        most predicted class and its fraction of the N predictions; with ``targets`` also ``target_share``,
        the fraction of clips whose label (one of whose labels, multi-label) is ``top_class``.
    """
    s = _to_numpy(scores)
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError(f"prediction_spread expects non-empty (N, C) scores, got shape {s.shape}")
    counts = np.bincount(s.argmax(axis=-1), minlength=s.shape[1])
    top = int(counts.argmax())
    out: dict[str, float | int] = {"clips": int(s.shape[0]), "distinct": int((counts > 0).sum()),
                                   "top_class": top, "top_share": float(counts[top] / s.shape[0])}
    if targets is not None:
        y = _to_numpy(targets)
        out["target_share"] = float((y[:, top] > 0).mean() if y.ndim == 2 else (y == top).mean())
    return out


def per_clip_correctness(scores: Any, targets: Any, uids: Sequence[str]) -> dict[str, str]:
    """Which clips a single-label evaluation got right, in the order of their sorted uids (so that two runs
    whose loaders ordered the clips differently still pair clip by clip).

    Args:
        scores: ``(N, C)`` logits (top-1 = argmax).
        targets: ``(N,)`` indices or ``(N, C)`` one-hot (argmax, as :func:`accuracy`).
        uids: the N clip ids, in the order of ``scores``.

    Returns:
        ``{"correct": results.encode_correct(bits), "clip_ids_sha1": results.clip_ids_sha1(uids)}``; the mean
        of the bits is :func:`accuracy`.
    """
    s = _to_numpy(scores)
    if s.ndim != 2 or len(uids) != s.shape[0]:
        raise ValueError(f"per_clip_correctness: {len(uids)} clip ids for scores of shape {s.shape}")
    hit = s.argmax(axis=-1) == _class_indices(targets, s.shape[1])
    order = np.argsort(np.asarray([str(u) for u in uids], dtype=object), kind="stable")
    return {"correct": encode_correct(hit[order]), "clip_ids_sha1": clip_ids_sha1(uids)}


def collapse_warning(spread: dict, class_names: Sequence[str] | None = None,
                     share: float = COLLAPSE_SHARE) -> str | None:
    """A one-line warning when the predictions fall on one class, else None.

    Collapsed: one distinct prediction over two clips or more, or more than ``share`` of them on one class,
    unless that class is itself at least that common among the targets (``spread["target_share"]``; then
    predicting it is what a good model does too).
    """
    n_top = spread["top_share"]
    if spread.get("clips", 2) < 2:  # one clip always has one predicted class
        return None
    if spread.get("target_share", 0.0) >= share and spread["distinct"] > 1:
        return None
    if spread["distinct"] > 1 and n_top <= share:
        return None
    name = class_names[spread["top_class"]] if class_names is not None else str(spread["top_class"])
    where = f" (it is {spread['target_share']:.1%} of the labels)" if "target_share" in spread else ""
    return (f"collapsed predictions: {n_top:.1%} of the clips are predicted as class {name!r}{where}, "
            f"{spread['distinct']} distinct class(es) predicted; the model has likely learned only the prior")


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values]


def evaluation_report(scores: Any, targets: Any, train_labels: Any, class_names: Sequence[str],
                      multilabel: bool = False, uids: Sequence[str] | None = None) -> dict:
    """Everything an evaluation record carries beside its score (``run_downstream.py`` writes it).

    Args:
        scores: ``(N, C)`` logits.
        targets: ``(N,)`` indices or ``(N, C)`` multi-hot.
        train_labels: the training split's labels (see :func:`class_baselines`).
        class_names: the C class names.
        multilabel: AS-20K-style task (per-class AP instead of per-class accuracy).
        uids: the clip ids, in the order of ``scores``; with them a single-label report's ``predictions`` also
            holds ``"correct"`` and ``"clip_ids_sha1"`` (:func:`per_clip_correctness`).

    Returns:
        ``{"baselines": {"majority", "majority_class", "chance"}, "per_class": {name: accuracy or AP or None},
        "predictions": {"clips", "distinct", "top_class", "top_share", "target_share", "collapsed"
        [, "correct", "clip_ids_sha1"]}, "warning"}``;
        class indices are given as names, undefined values (a class absent from the split) as None.
    """
    num_classes = len(class_names)
    base = class_baselines(train_labels, targets, num_classes, multilabel)
    if base["majority_class"] is not None:
        base["majority_class"] = class_names[base["majority_class"]]
    per_class = dict(zip(class_names, _nan_to_none(per_class_scores(scores, targets, multilabel))))
    spread = prediction_spread(scores, targets)
    warning = collapse_warning(spread, class_names)
    predictions = {**spread, "top_class": class_names[spread["top_class"]], "collapsed": warning is not None}
    if uids is not None and not multilabel:  # mAP needs the scores: a multi-label record keeps no bits
        predictions.update(per_clip_correctness(scores, targets, uids))
    return {"baselines": base, "per_class": per_class, "predictions": predictions, "warning": warning}
