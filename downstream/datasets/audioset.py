"""AudioSet-20K (``as20k``) from the AST/SSAST JSON datafiles and ``class_labels_indices.csv``.

Layout and split (SSAST ``README.md`` Data Preparation, ``src/dataloader.py``): train on
``balanced_train_data_type1_2_mean.json`` (SSAST ``src/finetune/audioset/run_as.sh``), eval on
``eval_data.json``; no dev split.
"""

from __future__ import annotations

import csv
from pathlib import Path

from common.audio import ManifestError, read_manifest

from .clips import Clip, DatasetLayoutError
from .layout import check_files_exist, require_dir, require_file
from .taskdata import TaskData

__all__ = ["as20k"]


def _read_audioset_labels(path: Path) -> tuple[list[str], dict[str, int]]:
    """``class_labels_indices.csv`` (``index,mid,display_name``) -> (display names, mid -> index)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"index", "mid", "display_name"} <= set(reader.fieldnames):
            raise DatasetLayoutError(
                f"'{path}' must have the header index,mid,display_name, got {reader.fieldnames}"
            )
        names: list[str] = []
        mid_to_index: dict[str, int] = {}
        for row in reader:
            line = reader.line_num
            if row["index"] != str(len(names)):
                raise DatasetLayoutError(
                    f"'{path}' line {line}: index {row['index']!r}, expected {len(names)}"
                )
            if row["mid"] in mid_to_index:
                raise DatasetLayoutError(f"'{path}' line {line}: duplicate mid {row['mid']!r}")
            mid_to_index[row["mid"]] = len(names)
            names.append(row["display_name"])
    if not names:
        raise DatasetLayoutError(f"'{path}' lists no classes")
    return names, mid_to_index


def _read_audioset_json(path: Path, mid_to_index: dict[str, int], labels_name: str, split: str) -> list[Clip]:
    """The clips of one datafile, read by ``common.audio.read_manifest`` (``wav`` is the audio path)."""
    try:
        rows = read_manifest(path, columns=("path", "labels"))
    except ManifestError as err:
        raise DatasetLayoutError(str(err)) from None
    clips = []
    for row in rows:
        wav, i = row.fields["wav"] if "wav" in row.fields else row.fields["path"], row.line
        mids = [m.strip() for m in str(row.fields["labels"]).split(",") if m.strip()]
        if not mids:
            raise DatasetLayoutError(f"'{path}' entry {i} ({wav}) has no labels")
        for mid in mids:
            if mid not in mid_to_index:
                raise DatasetLayoutError(
                    f"label {mid!r} in '{path}' entry {i} ({wav}) is not in {labels_name}")
        # AST/SSAST write absolute paths; relative ones are taken relative to the JSON file so a datafile can
        # travel with its audio (read_manifest resolves them so).
        clips.append(Clip(row.path, sorted({mid_to_index[m] for m in mids}), split, uid=row.path.stem))
    if not clips:
        raise DatasetLayoutError(f"'{path}' lists no clips")
    check_files_exist(clips, path)
    return clips


def as20k(
    root: str | Path,
    train_json: str | Path = "balanced_train_data_type1_2_mean.json",
    eval_json: str | Path = "eval_data.json",
    labels_csv: str | Path = "class_labels_indices.csv",
) -> TaskData:
    """AudioSet-20K (balanced train) with the AudioSet eval set, from AST/SSAST JSON datafiles.

    Datafiles hold ``{"data": [{"wav": "/path/x.flac", "labels": "/m/068hy,/m/07q6cd_"}, ...]}``; the labels
    are MIDs listed in ``class_labels_indices.csv`` (527 rows for AudioSet). The default train file is the
    PSLA "enhanced label" set SSAST trains on (``run_as.sh``); pass ``train_json="balanced_train_data.json"``
    for the original labels. There is no dev split: the recipe evaluates the eval set every epoch
    (``downstream.tasks`` says so in the task's ``selection_split``).

    Args:
        root: folder holding the datafiles and the labels CSV.
        train_json: train datafile, relative to ``root`` or absolute.
        eval_json: eval datafile (our ``test`` split), relative to ``root`` or absolute.
        labels_csv: ``index,mid,display_name`` class list, relative to ``root`` or absolute.

    Returns:
        Multi-label ``TaskData`` with ``train`` and ``test`` splits.
    """
    root = require_dir(Path(root), f"AS-20K root '{root}' is not a folder")
    files = {"train": root / train_json, "test": root / eval_json, "labels": root / labels_csv}
    for name, path in files.items():
        require_file(path, f"AS-20K root '{root}' has no {path.name} ({name} file expected at '{path}')")
    classes, mid_to_index = _read_audioset_labels(files["labels"])
    splits = {
        s: _read_audioset_json(files[s], mid_to_index, files["labels"].name, s) for s in ("train", "test")
    }
    return TaskData("as20k", classes, True, splits, sample_rate_hint=16000)
