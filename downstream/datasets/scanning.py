"""Preparing a reader's ``TaskData`` for a run: header scan, label checks, training crops, length order.

Real recordings are messy, so a run does not use a reader's ``TaskData`` as is: ``prepare_task`` (called by
``downstream.tasks.TaskSpec.read`` for every task) first

1. scans every listed file's header (``upstream.frontend.probe_audio``: frames, rate, channels; ~50 us a file,
   threads for large sets; float-sample files are also decoded, the only way to find NaN/inf). Files that
   cannot be used (0 bytes or 0 samples, no readable header: random bytes, text, a truncated header, NaN/inf
   samples) are skipped and counted, in one log line per dataset and in ``TaskData.identity()`` (which goes
   into every result record); ``DataConfig.on_bad_audio="error"`` (``--strict-audio``) refuses the dataset
   instead, naming the first bad file. A listed file that does not exist is always an error.
2. checks the labels: at least 2 classes in train, and no dev/test class that train never shows.
3. crops long training clips (``DataConfig.max_train_secs``; 10 s for folder/manifest) at a random position,
   and drops crops longer than their clip, so only clips that are really cropped bypass the feature cache.
4. orders every split longest first, so evaluation batches and the feature-cache build group clips of
   similar length (``downstream.batching``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from upstream.frontend import AudioError, AudioInfo, probe_audio

from .clips import SPLITS, Clip, DatasetLayoutError
from .taskdata import AudioScan, TaskData

__all__ = ["scan_task", "check_labels", "crop_training", "sort_by_length", "prepare_task"]

# The header scan runs this many threads for sets above SCAN_THREADS_FROM files (opening files waits on the
# disk, and libsndfile releases the GIL).
SCAN_THREADS = 16
SCAN_THREADS_FROM = 256


def _listed_files(data: TaskData) -> list[tuple[Path, Clip]]:
    """Distinct files in listing order (splits in ``SPLITS`` order), each with the first clip listing it."""
    seen: dict[Path, Clip] = {}
    order = [s for s in SPLITS if s in data.splits] + [s for s in data.splits if s not in SPLITS]
    for split in order:
        for clip in data.splits[split]:
            seen.setdefault(clip.path, clip)
    return list(seen.items())


def _probe(path: Path) -> AudioInfo | AudioError:
    try:
        return probe_audio(path)
    except AudioError as err:
        return err


def _relative(path: Path, base: Path | None, clip: Clip) -> str:
    """``path`` relative to the data root, or the clip's id for a file outside it (AS-20K absolute paths)."""
    if base is not None:
        try:
            return path.relative_to(base).as_posix()
        except ValueError:
            pass
    return f"{clip.split}:{clip.uid}"


def scan_task(data: TaskData, on_bad_audio: str = "skip", base: Path | None = None,
              log: Callable[[str], None] = print) -> TaskData:
    """Read every listed file's header; skip (and count) or refuse the unusable ones.

    Args:
        data: a reader's output.
        on_bad_audio: ``"skip"`` or ``"error"`` (``DataConfig.on_bad_audio``).
        base: the data root, that file paths in ``AudioScan.files_sha256`` are taken relative to.
        log: receives one line when files are skipped.

    Returns:
        A copy of ``data`` whose clips carry ``num_frames``/``native_sr``, without the unusable files, with
        ``audio`` set.

    Raises:
        DatasetLayoutError: a listed file does not exist; or, with ``"error"``, the first unusable file.
    """
    if on_bad_audio not in ("skip", "error"):
        raise ValueError(f"on_bad_audio must be 'skip' or 'error', got {on_bad_audio!r}")
    listed = _listed_files(data)
    paths = [p for p, _ in listed]
    if len(paths) >= SCAN_THREADS_FROM:
        with ThreadPoolExecutor(SCAN_THREADS) as pool:
            found = list(pool.map(_probe, paths))
    else:
        found = [_probe(p) for p in paths]
    info: dict[Path, AudioInfo] = {}
    bad: list[tuple[Path, str, AudioError]] = []  # (path, path relative to the data root, error)
    digest = []
    for (path, clip), result in zip(listed, found, strict=True):
        if isinstance(result, AudioError) and result.reason == "missing":
            raise DatasetLayoutError(f"audio file '{path}' ({clip.split} clip {clip.uid}) does not exist")
        size = result.size_bytes if isinstance(result, AudioInfo) else _size(path)
        rel = _relative(path, base, clip)
        digest.append(f"{rel}\t{size}")
        if isinstance(result, AudioError):
            bad.append((path, rel, result))
        else:
            info[path] = result
    if bad and on_bad_audio == "error":
        path, _, err = bad[0]
        more = f" ({len(bad) - 1} more unusable file(s) after it)" if len(bad) > 1 else ""
        raise DatasetLayoutError(f"{data.name}: audio file {path} cannot be used ({err.detail}){more}; "
                                 "remove or repair it, or let the run skip and count unusable files (without "
                                 "--strict-audio: data.on_bad_audio=skip)")
    skipped: dict[str, int] = {}
    for _, _, err in bad:
        skipped[err.reason] = skipped.get(err.reason, 0) + 1
    if bad:
        counts = ", ".join(f"{n} {reason.replace('_', '-')}" for reason, n in sorted(skipped.items()))
        log(f"{data.name}: skipped {len(bad)} of {len(paths)} files: {counts}; "
            f"first: {bad[0][0]} ({bad[0][2].detail})")
    splits = {
        split: [replace(c, num_frames=info[c.path].frames, native_sr=info[c.path].sample_rate)
                for c in clips if c.path in info]
        for split, clips in data.splits.items()
    }
    rates: dict[int, int] = {}
    channels: dict[int, int] = {}
    for item in info.values():
        rates[item.sample_rate] = rates.get(item.sample_rate, 0) + 1
        channels[item.channels] = channels.get(item.channels, 0) + 1
    scan = AudioScan(
        files=len(paths), skipped=skipped, first_skipped=f"{bad[0][1]} ({bad[0][2].detail})" if bad else "",
        sample_rates=rates,
        channels=channels, total_secs=sum(i.duration_secs for i in info.values()),
        files_sha256=hashlib.sha256("\n".join(sorted(digest)).encode()).hexdigest()[:16],
    )
    return replace(data, splits=splits, audio=scan, _noted_rates=set())


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def _class_names(data: TaskData, labels: set[int]) -> str:
    return ", ".join(repr(data.classes[i]) for i in sorted(labels))


def check_labels(data: TaskData) -> None:
    """Refuse a task a classifier cannot be trained and scored on.

    Raises:
        DatasetLayoutError: a split has no clips (e.g. all skipped), train shows fewer than 2 classes (the
            accuracy of a 1-class problem is 1.0 whatever the model), or a dev/test clip has a class train
            never shows (no model can learn it); the message names the classes and the split.
    """
    num_skipped = data.audio.num_skipped if data.audio is not None else 0
    skipped = f" ({num_skipped} unusable files were skipped)" if num_skipped else ""
    for split, clips in data.splits.items():
        if not clips:
            raise DatasetLayoutError(f"{data.name}: the {split} split has no usable clips{skipped}")

    def seen(clips: list[Clip]) -> set[int]:
        return {lab for c in clips for lab in (c.label if isinstance(c.label, list) else [c.label])}

    train = seen(data.splits["train"])
    if len(train) < 2:
        raise DatasetLayoutError(
            f"{data.name}: the train split has only {len(train)} class ({_class_names(data, train)}); a "
            f"classifier needs at least 2 (a 1-class task scores 1.0 whatever the model){skipped}")
    for split in [s for s in SPLITS if s != "train" and s in data.splits]:
        unseen = seen(data.splits[split]) - train
        if unseen:
            raise DatasetLayoutError(
                f"{data.name}: class(es) {_class_names(data, unseen)} appear in the {split} split but never "
                f"in train, so no model can learn them; move some of their clips to train or remove them"
                f"{skipped}")


def crop_training(data: TaskData, max_train_secs: float | None) -> TaskData:
    """Training clips longer than ``max_train_secs`` get a random crop of that length (a reader's shorter crop
    is kept); crops at least as long as their clip are dropped in every split (nothing to cut), so such clips
    can be cached. Needs the header scan's lengths; None or 0 crops nothing."""
    limit = max_train_secs or None

    def crop(c: Clip) -> Clip:
        if c.split == "train" and limit is not None and (c.crop_secs is None or c.crop_secs > limit):
            c = replace(c, crop_secs=limit, random_crop=True)
        if c.crop_secs is not None and c.duration_secs is not None and c.duration_secs <= c.crop_secs:
            c = replace(c, crop_secs=None, random_crop=False)
        return c

    splits = {s: [crop(c) for c in clips] for s, clips in data.splits.items()}
    return replace(data, splits=splits, max_train_secs=limit)


def sort_by_length(data: TaskData) -> TaskData:
    """Every split ordered longest first by the seconds the loader returns (ties keep the reader's order)."""
    def key(c: Clip) -> float:
        return -(c.loaded_secs or 0.0)

    return replace(data, splits={s: sorted(clips, key=key) for s, clips in data.splits.items()})


def prepare_task(data: TaskData, on_bad_audio: str = "skip", max_train_secs: float | None = None,
                 group_by_length: bool = False, group_window: int = 50, base: Path | None = None,
                 root_label: str = "", split_rule: dict | None = None,
                 log: Callable[[str], None] = print) -> TaskData:
    """A reader's ``TaskData`` made ready for a run: :func:`scan_task`, :func:`check_labels`,
    :func:`crop_training`, :func:`sort_by_length`, and the batching settings (see the module docstring).

    ``downstream.tasks.TaskSpec.read`` calls it with the task's defaults merged with ``DataConfig``.
    """
    data = scan_task(data, on_bad_audio, base, log)
    check_labels(data)
    data = sort_by_length(crop_training(data, max_train_secs))
    return replace(data, group_by_length=group_by_length, group_window=group_window, root_label=root_label,
                   split_rule=dict(split_rule or {}), _noted_rates=set())
