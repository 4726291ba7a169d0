"""Any dataset laid out as one sub-folder per class (``folder``), with or without ``train/dev/test``
folders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from common.audio import AUDIO_EXTENSIONS

from .clips import SPLITS, Clip, DatasetLayoutError
from .layout import class_audio_files, require_dir, subfolders
from .splits import require_splits, stratified_split
from .taskdata import TaskData

__all__ = ["folder"]


def folder(root: str | Path, seed: int = 0, ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> TaskData:
    """Any dataset laid out as one sub-folder per class.

    Either ``root/{train,dev,test}/<class>/<files>`` (all three split folders required when any exists) or
    ``root/<class>/<files>``, split per class with a seeded ``ratios`` (train, dev, test) draw. Classes are
    the sorted folder names; audio files (``common.audio.AUDIO_EXTENSIONS``) are found recursively, hidden
    files and folders skipped.

    Args:
        root: dataset folder.
        seed: seed of the split draw for the flat layout.
        ratios: train/dev/test fractions for the flat layout.
    """
    root = Path(root)
    require_dir(root, f"folder dataset root '{root}' is not a folder")
    present = [s for s in SPLITS if (root / s).is_dir()]
    split_dirs = {s: root / s for s in SPLITS} if present else {None: root}
    if present and len(present) < len(SPLITS):
        missing = [s for s in SPLITS if s not in present]
        raise DatasetLayoutError(f"folder dataset '{root}' has {present}/ but no {missing}/ split folder(s)")
    class_names = sorted({d.name for base in split_dirs.values() for d in subfolders(base)})
    if not class_names:
        raise DatasetLayoutError(f"folder dataset '{root}' has no class sub-folders")
    index = {c: i for i, c in enumerate(class_names)}
    found: list[tuple[Path, int, str | None]] = []
    for split, base in split_dirs.items():
        for class_dir in subfolders(base):
            files = class_audio_files(class_dir)
            if not files:
                raise DatasetLayoutError(
                    f"class folder '{class_dir}' has no audio files ({', '.join(AUDIO_EXTENSIONS)})"
                )
            found += [(p, index[class_dir.name], split) for p in files]
    if not present:
        assigned = stratified_split([lab for _, lab, _ in found], ratios, seed)
        found = [(p, lab, s) for (p, lab, _), s in zip(found, assigned, strict=True)]
    splits: dict[str, list[Clip]] = {s: [] for s in SPLITS}
    for path, label, split in found:
        splits[split].append(Clip(path, label, split, uid=path.relative_to(root).as_posix()))
    require_splits("folder dataset", splits, root)
    rule = {"source": "layout"} if present else {"source": "drawn", "seed": seed, "ratios": list(ratios)}
    return TaskData("folder", class_names, False, splits, split_rule=rule)
