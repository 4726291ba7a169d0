"""Checks every reader makes of its on-disk layout, each raising ``DatasetLayoutError`` naming the path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.audio import list_audio_files

from .clips import Clip, DatasetLayoutError

__all__ = ["EAGER_CHECK_LIMIT", "require_dir", "require_file", "check_fold", "check_files_exist",
           "class_audio_files", "subfolders"]

# Above this many listed files, a reader leaves the existence check to the header scan (``scan_task``), which
# opens every file anyway: stat-ing 150k VoxCeleb1 files twice on a network disk would double the wait.
EAGER_CHECK_LIMIT = 5000


def require_dir(path: Path, message: str) -> Path:
    """``path`` if it is a folder, else ``DatasetLayoutError(message)``."""
    if not path.is_dir():
        raise DatasetLayoutError(message)
    return path


def require_file(path: Path, message: str) -> Path:
    """``path`` if it is a file, else ``DatasetLayoutError(message)``."""
    if not path.is_file():
        raise DatasetLayoutError(message)
    return path


def check_fold(task: str, fold: Any, num_folds: int) -> int:
    """``fold`` as an int in 1..``num_folds``, else ``DatasetLayoutError`` naming the task."""
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 1 <= fold <= num_folds:
        raise DatasetLayoutError(f"{task}: fold {fold!r} out of range 1..{num_folds}")
    return int(fold)


def check_files_exist(clips: Sequence[Clip], listed_in: Path) -> None:
    """Check that every clip's file exists, for lists short enough to stat quickly (``EAGER_CHECK_LIMIT``)."""
    if len(clips) > EAGER_CHECK_LIMIT:
        return  # scan_task (every run) and ClipDataset check each file
    missing = [c.path for c in clips if not c.path.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetLayoutError(f"audio file '{missing[0]}' listed in '{listed_in}' does not exist{more}")


def subfolders(directory: Path) -> list[Path]:
    """The sorted, non-hidden sub-folders of ``directory`` (class or split folders)."""
    return sorted(d for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))


def class_audio_files(directory: Path) -> list[Path]:
    """Audio files of one class folder (``common.audio.list_audio_files``: recursive, hidden ones skipped).

    Sorted as paths (component by component), the order the seeded split draw of the folder reader has
    always used; ``list_audio_files`` sorts by the path string, which orders ``a/b.wav`` and ``a-c.wav`` the
    other way.
    """
    return sorted(list_audio_files(directory))
