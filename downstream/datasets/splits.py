"""Split rules shared by the readers: the seeded per-class draw and the check that every split has clips."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .clips import SPLITS, Clip, DatasetLayoutError

__all__ = ["check_ratios", "stratified_split", "require_splits"]


def check_ratios(ratios: Sequence[float], name: str) -> None:
    """``ValueError`` naming ``name`` unless ``ratios`` are 3 fractions train, dev, test summing to 1."""
    ok = len(ratios) == 3 and all(r >= 0 for r in ratios) and ratios[0] > 0 and math.isclose(sum(ratios), 1.0)
    if not ok:
        raise ValueError(f"{name} must be 3 numbers train,dev,test >= 0 summing to 1 with train > 0, e.g. "
                         f"0.8,0.1,0.1; got {tuple(ratios)}")


def stratified_split(labels: Sequence[int], ratios: Sequence[float], seed: int) -> list[str]:
    """Seeded per-class train/dev/test assignment.

    Every class is shuffled with its own draw from one seeded generator, then ``round(n * ratio)`` clips go to
    test and to dev (at least one clip stays in train), so small classes are represented in proportion.

    Returns:
        One split name per label.
    """
    check_ratios(ratios, "split ratios")
    rng = np.random.default_rng(seed)
    out = ["train"] * len(labels)
    by_class: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    for lab in sorted(by_class):
        idx = [by_class[lab][j] for j in rng.permutation(len(by_class[lab]))]
        n = len(idx)
        n_test = min(int(n * ratios[2] + 0.5), max(n - 1, 0))
        n_dev = min(int(n * ratios[1] + 0.5), max(n - 1 - n_test, 0))
        for j in idx[:n_test]:
            out[j] = "test"
        for j in idx[n_test : n_test + n_dev]:
            out[j] = "dev"
    return out


def require_splits(task: str, splits: dict[str, list[Clip]], where: Path) -> None:
    """``DatasetLayoutError`` naming ``where`` when any of train/dev/test has no clips."""
    for name in SPLITS:
        if not splits.get(name):
            raise DatasetLayoutError(f"{task} '{where}' gives no '{name}' clips; every split needs some")
