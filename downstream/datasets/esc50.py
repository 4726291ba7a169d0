"""ESC-50 (``esc50``) from ``ESC-50-master/{audio,meta/esc50.csv}``; fold k = test (SSAST
``src/finetune/esc50/prep_esc50.py``), no dev split."""

from __future__ import annotations

import csv
from pathlib import Path

from .clips import Clip, DatasetLayoutError
from .layout import check_files_exist, check_fold, require_dir, require_file
from .taskdata import TaskData

__all__ = ["esc50"]


def esc50(root: str | Path, fold: int) -> TaskData:
    """ESC-50, fold ``fold`` held out for test, the other four for training.

    Layout as distributed: ``ESC-50-master/audio/*.wav`` (5 s, 44.1 kHz) and ``ESC-50-master/meta/esc50.csv``
    with header ``filename,fold,target,category,esc10,src_file,take``. Classes are ordered by ``target`` (50
    in the real set). No dev split: SSAST picks the epoch on the fold-averaged test curve (the task's
    ``selection_split`` and ``select_runs`` in ``downstream.tasks``).

    Args:
        root: the ``ESC-50-master`` folder.
        fold: test fold, 1..5.
    """
    fold = check_fold("ESC-50", fold, 5)
    root = Path(root)
    hint = "expected the ESC-50-master layout with audio/ and meta/"
    meta = require_file(root / "meta" / "esc50.csv", f"ESC-50 root '{root}' has no meta/esc50.csv; {hint}")
    audio = require_dir(root / "audio", f"ESC-50 root '{root}' has no audio/ folder; {hint}")
    names: dict[int, str] = {}
    rows: list[tuple[str, int, int]] = []
    with open(meta, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"filename", "fold", "target", "category"} <= set(reader.fieldnames):
            raise DatasetLayoutError(
                f"'{meta}' must have the columns filename,fold,target,category; got {reader.fieldnames}"
            )
        for row in reader:
            line = reader.line_num
            try:
                row_fold, target = int(row["fold"]), int(row["target"])
            except (TypeError, ValueError):
                raise DatasetLayoutError(
                    f"'{meta}' line {line}: fold/target must be integers, got {row}"
                ) from None
            if not 1 <= row_fold <= 5:
                raise DatasetLayoutError(f"'{meta}' line {line}: fold {row_fold} out of range 1..5")
            if target < 0:
                raise DatasetLayoutError(f"'{meta}' line {line}: negative target {target}")
            if names.setdefault(target, row["category"]) != row["category"]:
                raise DatasetLayoutError(
                    f"'{meta}' line {line}: target {target} is {row['category']!r} here but "
                    f"{names[target]!r} above"
                )
            rows.append((row["filename"], row_fold, target))
    if not rows:
        raise DatasetLayoutError(f"'{meta}' lists no clips")
    gaps = [t for t in range(max(names) + 1) if t not in names]
    if gaps:
        raise DatasetLayoutError(f"'{meta}' has no clip for target(s) {gaps}; need all of 0..{max(names)}")
    classes = [names[t] for t in range(len(names))]
    splits: dict[str, list[Clip]] = {"train": [], "test": []}
    for filename, row_fold, target in rows:
        split = "test" if row_fold == fold else "train"
        splits[split].append(Clip(audio / filename, target, split, uid=Path(filename).stem, fold=row_fold))
    if not splits["test"]:
        raise DatasetLayoutError(f"'{meta}' has no clips in fold {fold}")
    check_files_exist(splits["train"] + splits["test"], meta)
    return TaskData("esc50", classes, False, splits, sample_rate_hint=44100)
