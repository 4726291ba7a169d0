"""Any dataset listed in a CSV or JSONL manifest (``manifest``): rows ``path, label[, split][, id]``, read by
``common.audio.read_manifest`` (the project's one manifest reader)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.audio import ManifestError, read_manifest

from .clips import SPLITS, Clip, DatasetLayoutError
from .layout import check_files_exist, require_file
from .splits import require_splits, stratified_split
from .taskdata import TaskData

__all__ = ["manifest"]


def manifest(path: str | Path, seed: int = 0, ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> TaskData:
    """A dataset listed in a CSV or JSONL manifest.

    CSV: header ``path,label[,split][,id]``. JSONL (``.jsonl``, or ``.json`` holding one object per line):
    one ``{"path": ..., "label": ..., "split": ..., "id": ...}`` object per line; a JSONL ``label`` may be a
    list of names, which makes the task multi-label. Relative paths are resolved against the manifest's folder
    (``common.audio.read_manifest``). Labels are class names, mapped to indices of
    the sorted names. Without a split column the rows are split per class by a seeded ``ratios`` draw; with
    one, every row needs a split in ``train``/``dev``/``test``.

    Args:
        path: manifest file (``.csv`` or ``.jsonl``; the other formats of ``read_manifest`` carry no labels).
        seed: seed of the split draw when the manifest has no split.
        ratios: train/dev/test fractions for that draw.
    """
    path = require_file(Path(path), f"manifest '{path}' does not exist")
    try:
        rows = read_manifest(path, columns=("path", "label"))
    except ManifestError as err:
        raise DatasetLayoutError(str(err)) from None
    if not rows:
        raise DatasetLayoutError(f"manifest '{path}' lists no clips")
    entries: list[tuple[Path, list[str], str | None, str]] = []
    multilabel = False
    for row in rows:
        label = row.fields["label"]
        if label in (None, "", []):
            raise DatasetLayoutError(f"manifest '{path}' line {row.line}: 'label' is empty, got {row.fields}")
        multilabel |= isinstance(label, list)
        names = [str(x) for x in label] if isinstance(label, list) else [str(label)]
        split = row.fields.get("split") or None
        if split is not None and split not in SPLITS:
            raise DatasetLayoutError(
                f"manifest '{path}' line {row.line}: split {split!r} is not one of {list(SPLITS)}"
            )
        written = row.fields.get("path") or row.fields.get("wav")  # the id defaults to the path as written
        entries.append((row.path, names, split, str(row.fields.get("id") or written)))
    with_split = sum(e[2] is not None for e in entries)
    if 0 < with_split < len(entries):
        first = next(row.line for row, e in zip(rows, entries, strict=True) if e[2] is None)
        raise DatasetLayoutError(
            f"manifest '{path}' line {first} has no split while other rows do; give all or none"
        )
    classes = sorted({n for _, names, _, _ in entries for n in names})
    index = {c: i for i, c in enumerate(classes)}
    labels: list[int | list[int]] = [
        sorted({index[n] for n in names}) if multilabel else index[names[0]] for _, names, _, _ in entries
    ]
    if with_split:
        split_names = [e[2] for e in entries]
    else:
        # Stratify single-label sets by class; multi-label rows are split by their first label.
        strata = [lab[0] if isinstance(lab, list) else lab for lab in labels]
        split_names = stratified_split(strata, ratios, seed)
    splits: dict[str, list[Clip]] = {s: [] for s in SPLITS}
    for (audio, _, _, uid), label, split in zip(entries, labels, split_names, strict=True):
        splits[split].append(Clip(audio, label, split, uid=uid))
    require_splits("manifest", splits, path)
    check_files_exist([c for s in SPLITS for c in splits[s]], path)
    rule = {"source": "layout"} if with_split else {"source": "drawn", "seed": seed, "ratios": list(ratios)}
    return TaskData("manifest", classes, multilabel, splits, split_rule=rule)
