"""Downstream tasks read straight from their public on-disk layouts.

Each reader checks the layout up front, raises ``DatasetLayoutError`` naming the missing file or the bad
value, and returns a ``TaskData``: class names, split lists of ``Clip`` records and the hints a runner needs.
Where each layout and split rule comes from:

* ``as20k``: AST/SSAST JSON datafiles + ``class_labels_indices.csv`` (SSAST ``README.md`` Data Preparation,
  ``src/dataloader.py``); train on ``balanced_train_data_type1_2_mean.json`` (SSAST
  ``src/finetune/audioset/run_as.sh``), eval on ``eval_data.json``.
* ``esc50``: ``ESC-50-master/{audio,meta/esc50.csv}``, fold k = test
  (SSAST ``src/finetune/esc50/prep_esc50.py``).
* ``speech_commands_v2`` (KS2): train = all - (validation_list + testing_list), ``_background_noise_``
  excluded (SSAST ``src/finetune/speechcommands_v2_35/prep_sc.py``).
* ``speech_commands_v1`` (KS1) as SUPERB runs it: sha1 hash split, 12 classes, ``_silence_`` from background
  noise, separate test set (s3prl ``downstream/speech_commands/{dataset.py,expert.py}``).
* ``voxceleb1`` (SID): ``iden_split.txt`` over ``*/wav/``
  (s3prl ``downstream/voxceleb1/{dataset.py,expert.py}``).
* ``iemocap`` (ER): ``EmoEvaluation`` labels, exc -> hap, leave-one-session-out, dev = 20 % of train (s3prl
  ``downstream/emotion/{IEMOCAP_preprocess.py,expert.py}``).
* ``folder``: generic, one sub-folder per class, optional ``train/dev/test`` level.
* ``manifest``: generic, CSV or JSONL (lhotse-style) rows ``path, label[, split]``.

Split names are always ``train``, ``dev`` and ``test``. AS-20K and ESC-50 have no dev split: their recipes
select on the test/eval set (per-epoch eval for AS, the fold-averaged curve for ESC-50), which
``TaskData.selection_split`` records.

``ClipDataset`` loads a clip as mono float32 in [-1, 1) at the upstream's sample rate (soxr resampling),
applies the clip's crop (random for training, reproducible otherwise) and returns ``(wav, label, uid)``;
``collate`` batches these.

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

import csv
import hashlib
import json
import math
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from upstream.frontend import AudioError, AudioInfo, load_audio, probe_audio

# The shared audio reader; read_audio falls back to soundfile + soxr when this is None (tests check both agree).
_frontend_load_audio: Callable | None = load_audio

__all__ = [
    "DatasetLayoutError",
    "Clip",
    "DataConfig",
    "AudioScan",
    "TaskData",
    "prepare_task",
    "scan_task",
    "check_labels",
    "ClipDataset",
    "collate",
    "class_balanced_weights",
    "read_audio",
    "speech_commands_hash_percentage",
    "as20k",
    "esc50",
    "speech_commands_v2",
    "speech_commands_v1",
    "voxceleb1",
    "iemocap",
    "folder",
    "manifest",
    "READERS",
    "SPLITS",
    "AUDIO_EXTENSIONS",
    "KS1_CLASSES",
    "KS1_KEYWORDS",
    "IEMOCAP_CLASSES",
]

SPLITS = ("train", "dev", "test")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
# Above this many listed files, a reader leaves the existence check to the header scan (``scan_task``), which
# opens every file anyway: stat-ing 150k VoxCeleb1 files twice on a network disk would double the wait.
EAGER_CHECK_LIMIT = 5000
# The header scan runs this many threads for sets above SCAN_THREADS_FROM files (opening files waits on the disk,
# and libsndfile releases the GIL).
SCAN_THREADS = 16
SCAN_THREADS_FROM = 256


class DatasetLayoutError(ValueError):
    """A dataset on disk does not match the layout its reader expects; the message names the path or value."""


# ----------------------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Clip:
    """One labelled audio file.

    Attributes:
        path: audio file.
        label: class index, or the sorted list of class indices for multi-label tasks (AS-20K).
        split: ``train``, ``dev`` or ``test``.
        uid: identifier unique within the task, used in prediction files; defaults to ``<parent>/<name>``.
        fold: ESC-50 fold or IEMOCAP session the clip belongs to; None elsewhere.
        crop_secs: if set and the audio is longer, a window of this length is kept (KS1 ``_silence_``: 1 s;
            SID train: ``max_timestep`` = 8 s).
        random_crop: draw the window position at random (else the window starts at 0).
        gain_db: gain applied after loading; KS1 uses -3 dB, as s3prl's sox ``gain -3.0`` effect.
        num_frames: samples per channel at the file's own rate, from the header scan (None before it).
        native_sr: the file's sample rate, from the header scan (None before it).
    """

    path: Path
    label: int | list[int]
    split: str
    uid: str = ""
    fold: int | None = None
    crop_secs: float | None = None
    random_crop: bool = False
    gain_db: float = 0.0
    num_frames: int | None = None
    native_sr: int | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.uid:
            self.uid = "/".join(self.path.parts[-2:])

    @property
    def duration_secs(self) -> float | None:
        """Length of the file in seconds (None before the header scan)."""
        return None if self.num_frames is None or not self.native_sr else self.num_frames / self.native_sr

    @property
    def loaded_secs(self) -> float | None:
        """Seconds the loader returns: the file's length, or its crop when that is shorter."""
        secs = self.duration_secs
        if secs is None or self.crop_secs is None:
            return secs
        return min(secs, self.crop_secs)


@dataclass
class DataConfig:
    """How a downstream run treats its dataset (``data.*`` in the run config; saved with the run).

    ``null`` for ``max_train_secs`` / ``group_by_length`` / ``split_*`` means the task's default
    (``downstream.tasks.TaskSpec``), so one config serves every task.
    """

    # skip: unusable files (empty, unreadable header, text, random bytes, NaN/inf samples) are left out and
    # counted in the log and the result record; error: the dataset is refused, naming the first (--strict-audio)
    on_bad_audio: Literal["skip", "error"] = "skip"
    # training clips longer than this are cropped at a random position (each epoch anew), so one long
    # recording cannot make its batch cost its length; null = task default (10 s for folder/manifest, the paper
    # tasks keep their recipes' crops), 0 = never crop
    max_train_secs: float | None = None
    # training batches draw clips of similar length (padding follows each clip's own length); null = task
    # default (on for folder/manifest; the paper tasks keep s3prl's uniformly random batches)
    group_by_length: bool | None = None
    group_window: int = 50  # micro-batches whose clips are sorted by length together before being shuffled
    # folder/manifest without split folders/column: the seeded per-class train/dev/test draw (--split-seed,
    # --split-ratios); null = seed 0 and (0.8, 0.1, 0.1). The seed is not the run's --seed on purpose: every
    # run and every upstream is then scored on the same test clips, as on the paper tasks' fixed splits
    split_seed: int | None = None
    split_ratios: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.max_train_secs is not None and not self.max_train_secs >= 0:
            raise ValueError(f"max_train_secs must be >= 0 seconds (0 = never crop), got {self.max_train_secs}")
        if self.group_window < 1:
            raise ValueError(f"group_window must be >= 1 micro-batch, got {self.group_window}")
        if self.split_ratios is not None:
            _check_ratios(self.split_ratios, "split_ratios")


@dataclass
class AudioScan:
    """What the header scan of a task's files found (``scan_task``).

    Attributes:
        files: distinct files listed (a file listed in two splits, as KS1's noise files, counts once).
        skipped: reason (``AudioError.reason``: empty, unreadable, text, non_finite) -> files left out.
        first_skipped: the first unusable file (listing order), relative to the data root, and its problem.
        sample_rates: native sample rate -> usable files.
        channels: channel count -> usable files.
        total_secs: usable audio in seconds.
        files_sha256: sha256 (16 hex digits) of the sorted (path relative to the data root, size in bytes)
            pairs of every listed file: the dataset's identity, the same on any machine.
    """

    files: int
    skipped: dict[str, int]
    first_skipped: str
    sample_rates: dict[int, int]
    channels: dict[int, int]
    total_secs: float
    files_sha256: str

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


@dataclass
class TaskData:
    """What a reader found on disk.

    Attributes:
        name: reader name (a key of ``READERS``).
        classes: class names; a clip's label indexes this list.
        multilabel: labels are index lists (score with mAP, train with BCE) rather than one index.
        splits: ``{"train": [...], "dev": [...], "test": [...]}``; ``dev`` is absent for AS-20K and ESC-50.
        selection_split: split that picks the checkpoint/epoch: ``dev``, or ``test`` where the recipe says so.
        sample_rate_hint: native sample rate of the files as distributed (None if unknown).

    Set by ``prepare_task`` (defaults: a reader's raw output):
        audio: the header scan's findings.
        root_label: the data root as given when relative, else its last component (no machine paths).
        split_rule: how the splits were made: ``{"source": "layout"}`` or ``{"source": "drawn", "seed": s,
            "ratios": [...]}``.
        max_train_secs: the training crop applied (None: none).
        group_by_length, group_window: how training batches are drawn (``downstream.batching``).
    """

    name: str
    classes: list[str]
    multilabel: bool
    splits: dict[str, list[Clip]]
    selection_split: str = "dev"
    sample_rate_hint: int | None = None
    audio: AudioScan | None = None
    root_label: str = ""
    split_rule: dict = field(default_factory=dict)
    max_train_secs: float | None = None
    group_by_length: bool = False
    group_window: int = 50
    _noted_rates: set = field(default_factory=set, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def resampling_note(self, sample_rate: int) -> str | None:
        """One line saying which native rates are resampled to ``sample_rate`` (None when none differ)."""
        if self.audio is None:
            return None
        other = {sr: n for sr, n in self.audio.sample_rates.items() if sr != sample_rate}
        if not other:
            return None
        rates = ", ".join(f"{n} at {sr} Hz" for sr, n in sorted(other.items()))
        line = f"{self.name}: resampling {sum(other.values())} of {sum(self.audio.sample_rates.values())} files " \
               f"({rates}) to the upstream's {sample_rate} Hz"
        low = min(other)
        if low < sample_rate:
            line += f"; above {low // 2} Hz (the files' Nyquist frequency) the features see no signal"
        return line

    def note_resampling(self, sample_rate: int, log: Callable[[str], None] = print) -> None:
        """Log :meth:`resampling_note` once per dataset and model rate."""
        if sample_rate not in self._noted_rates:
            self._noted_rates.add(sample_rate)
            note = self.resampling_note(sample_rate)
            if note:
                log(note)

    def identity(self, sample_rate: int | None = None) -> dict:
        """What a result record keeps of this dataset: name, root, file-list and split hashes, native rates,
        skipped files, crop and batching; JSON-able, without machine paths.

        Args:
            sample_rate: the upstream's rate, to count the files resampled to it.
        """
        out: dict[str, Any] = {"name": self.name, "root": self.root_label,
                               "clips": {s: len(c) for s, c in self.splits.items()},
                               "splits_sha256": _splits_digest(self), "split": dict(self.split_rule),
                               "max_train_secs": self.max_train_secs,
                               "cropped_train_clips": sum(1 for c in self.splits.get("train", [])
                                                          if c.crop_secs is not None),
                               "group_by_length": self.group_by_length}
        scan = self.audio
        if scan is not None:
            out.update(files=scan.files, files_sha256=scan.files_sha256, skipped=dict(scan.skipped),
                       num_skipped=scan.num_skipped, first_skipped=scan.first_skipped,
                       native_sample_rates={str(k): v for k, v in sorted(scan.sample_rates.items())},
                       channels={str(k): v for k, v in sorted(scan.channels.items())},
                       hours=round(scan.total_secs / 3600, 4))
            if sample_rate is not None:
                out.update(sample_rate=sample_rate,
                           resampled_files=sum(n for sr, n in scan.sample_rates.items() if sr != sample_rate))
        return out

    def dataset(self, split: str, sample_rate: int, train: bool | None = None, seed: int = 0) -> ClipDataset:
        """A ``ClipDataset`` over one split; ``train`` defaults to ``split == "train"``."""
        if split not in self.splits:
            raise KeyError(f"task {self.name!r} has no split {split!r}; it has {sorted(self.splits)}")
        return ClipDataset(
            self.splits[split],
            sample_rate,
            self.classes,
            multilabel=self.multilabel,
            train=(split == "train") if train is None else train,
            seed=seed,
        )


# ----------------------------------------------------------------------------------------------------------
# Shared checks
# ----------------------------------------------------------------------------------------------------------
def _require_dir(path: Path, message: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(message)
    return path


def _require_file(path: Path, message: str) -> Path:
    if not path.is_file():
        raise DatasetLayoutError(message)
    return path


def _check_fold(task: str, fold: Any, num_folds: int) -> int:
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 1 <= fold <= num_folds:
        raise DatasetLayoutError(f"{task}: fold {fold!r} out of range 1..{num_folds}")
    return int(fold)


def _check_files_exist(clips: Sequence[Clip], listed_in: Path) -> None:
    """Check that every clip's file exists, for lists short enough to stat quickly (``EAGER_CHECK_LIMIT``)."""
    if len(clips) > EAGER_CHECK_LIMIT:
        return  # scan_task (every run) and ClipDataset check each file
    missing = [c.path for c in clips if not c.path.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetLayoutError(f"audio file '{missing[0]}' listed in '{listed_in}' does not exist{more}")


def _audio_files(directory: Path) -> list[Path]:
    """Audio files under ``directory`` (recursively, hidden files skipped), sorted for a stable order."""
    return sorted(
        p
        for p in directory.rglob("*")
        if p.suffix.lower() in AUDIO_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def _check_ratios(ratios: Sequence[float], name: str) -> None:
    ok = len(ratios) == 3 and all(r >= 0 for r in ratios) and ratios[0] > 0 and math.isclose(sum(ratios), 1.0)
    if not ok:
        raise ValueError(f"{name} must be 3 numbers train,dev,test >= 0 summing to 1 with train > 0, e.g. "
                         f"0.8,0.1,0.1; got {tuple(ratios)}")


def _stratified_split(labels: Sequence[int], ratios: Sequence[float], seed: int) -> list[str]:
    """Seeded per-class train/dev/test assignment.

    Every class is shuffled with its own draw from one seeded generator, then ``round(n * ratio)`` clips go to
    test and to dev (at least one clip stays in train), so small classes are represented in proportion.

    Returns:
        One split name per label.
    """
    _check_ratios(ratios, "split ratios")
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


def _require_splits(task: str, splits: dict[str, list[Clip]], where: Path) -> None:
    for name in SPLITS:
        if not splits.get(name):
            raise DatasetLayoutError(f"{task} '{where}' gives no '{name}' clips; every split needs some")


# ----------------------------------------------------------------------------------------------------------
# AS-20K (AST/SSAST JSON datafiles)
# ----------------------------------------------------------------------------------------------------------
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
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetLayoutError(f"'{path}' is not valid JSON: {err}") from err
    entries = data.get("data") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise DatasetLayoutError(f'\'{path}\' must hold {{"data": [{{"wav": ..., "labels": ...}}, ...]}}')
    clips = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("wav") or "labels" not in entry:
            raise DatasetLayoutError(
                f"'{path}' entry {i}: expected an object with 'wav' and 'labels', got {entry!r}"
            )
        mids = [m.strip() for m in str(entry["labels"]).split(",") if m.strip()]
        if not mids:
            raise DatasetLayoutError(f"'{path}' entry {i} ({entry['wav']}) has no labels")
        for mid in mids:
            if mid not in mid_to_index:
                raise DatasetLayoutError(
                    f"label {mid!r} in '{path}' entry {i} ({entry['wav']}) is not in {labels_name}"
                )
        wav = Path(entry["wav"])
        # AST/SSAST write absolute paths; relative ones are taken relative to the JSON file so a datafile can
        # travel with its audio.
        wav = wav if wav.is_absolute() else path.parent / wav
        clips.append(Clip(wav, sorted({mid_to_index[m] for m in mids}), split, uid=wav.stem))
    if not clips:
        raise DatasetLayoutError(f"'{path}' lists no clips")
    _check_files_exist(clips, path)
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
    (``selection_split``).

    Args:
        root: folder holding the datafiles and the labels CSV.
        train_json: train datafile, relative to ``root`` or absolute.
        eval_json: eval datafile (our ``test`` split), relative to ``root`` or absolute.
        labels_csv: ``index,mid,display_name`` class list, relative to ``root`` or absolute.

    Returns:
        Multi-label ``TaskData`` with ``train`` and ``test`` splits.
    """
    root = _require_dir(Path(root), f"AS-20K root '{root}' is not a folder")
    files = {"train": root / train_json, "test": root / eval_json, "labels": root / labels_csv}
    for name, path in files.items():
        _require_file(path, f"AS-20K root '{root}' has no {path.name} ({name} file expected at '{path}')")
    classes, mid_to_index = _read_audioset_labels(files["labels"])
    splits = {
        s: _read_audioset_json(files[s], mid_to_index, files["labels"].name, s) for s in ("train", "test")
    }
    return TaskData("as20k", classes, True, splits, selection_split="test", sample_rate_hint=16000)


# ----------------------------------------------------------------------------------------------------------
# ESC-50
# ----------------------------------------------------------------------------------------------------------
def esc50(root: str | Path, fold: int) -> TaskData:
    """ESC-50, fold ``fold`` held out for test, the other four for training.

    Layout as distributed: ``ESC-50-master/audio/*.wav`` (5 s, 44.1 kHz) and ``ESC-50-master/meta/esc50.csv``
    with header ``filename,fold,target,category,esc10,src_file,take``. Classes are ordered by ``target`` (50
    in the real set). No dev split: SSAST picks the epoch on the fold-averaged test curve
    (``selection_split``, ``metrics.esc50_select_epoch``).

    Args:
        root: the ``ESC-50-master`` folder.
        fold: test fold, 1..5.
    """
    fold = _check_fold("ESC-50", fold, 5)
    root = Path(root)
    hint = "expected the ESC-50-master layout with audio/ and meta/"
    meta = _require_file(root / "meta" / "esc50.csv", f"ESC-50 root '{root}' has no meta/esc50.csv; {hint}")
    audio = _require_dir(root / "audio", f"ESC-50 root '{root}' has no audio/ folder; {hint}")
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
    _check_files_exist(splits["train"] + splits["test"], meta)
    return TaskData("esc50", classes, False, splits, selection_split="test", sample_rate_hint=44100)


# ----------------------------------------------------------------------------------------------------------
# Speech Commands v2 (KS2, 35 classes)
# ----------------------------------------------------------------------------------------------------------
def _speech_commands_words(root: Path) -> list[str]:
    return sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and d.name != "_background_noise_" and not d.name.startswith(".")
    )


def speech_commands_v2(root: str | Path) -> TaskData:
    """Speech Commands v0.02, 35 words, as SSAST's KS2 recipe splits it.

    Layout as distributed (``speech_commands_v0.02.tar.gz``): one folder per word, ``_background_noise_/``
    (excluded), ``validation_list.txt`` and ``testing_list.txt`` holding paths like
    ``right/xxx_nohash_0.wav``. dev = validation list, test = testing list, train = every other word clip.
    Classes are the sorted word folders (35 in the real set).

    Args:
        root: the extracted ``speech_commands_v0.02`` folder.
    """
    root = Path(root)
    hint = "expected the speech_commands_v0.02 layout (word folders, validation_list.txt, testing_list.txt)"
    _require_dir(root, f"Speech Commands root '{root}' is not a folder; {hint}")
    lists = {
        split: _require_file(root / name, f"Speech Commands root '{root}' has no {name}; {hint}")
        for split, name in (("dev", "validation_list.txt"), ("test", "testing_list.txt"))
    }
    classes = _speech_commands_words(root)
    if not classes:
        raise DatasetLayoutError(f"Speech Commands root '{root}' has no word folders; {hint}")
    index = {c: i for i, c in enumerate(classes)}
    splits: dict[str, list[Clip]] = {}
    held_out: set[str] = set()
    for split, list_path in lists.items():
        clips = []
        for line_no, line in enumerate(list_path.read_text(encoding="utf-8").splitlines(), start=1):
            rel = line.strip()
            if not rel:
                continue
            word = rel.split("/")[0]
            if word not in index or not (root / rel).is_file():
                raise DatasetLayoutError(f"'{list_path}' line {line_no}: '{root / rel}' does not exist")
            held_out.add(rel)
            clips.append(Clip(root / rel, index[word], split, uid=rel))
        splits[split] = clips
    splits["train"] = [
        Clip(p, index[word], "train", uid=f"{word}/{p.name}")
        for word in classes
        for p in sorted((root / word).glob("*.wav"))
        if f"{word}/{p.name}" not in held_out
    ]
    splits = {s: splits[s] for s in SPLITS}
    _require_splits("Speech Commands v2", splits, root)
    return TaskData("speech_commands_v2", classes, False, splits, "dev", sample_rate_hint=16000)


# ----------------------------------------------------------------------------------------------------------
# Speech Commands v1 (KS1, SUPERB 12 classes)
# ----------------------------------------------------------------------------------------------------------
KS1_KEYWORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
KS1_CLASSES = KS1_KEYWORDS + ["_unknown_", "_silence_"]  # s3prl CLASSES, in its index order
# MAX_NUM_WAVS_PER_CLASS of the Speech Commands reference split, which s3prl's split_dataset reuses.
_KS1_MAX_UTTERANCES = 2**27 - 1
_KS1_GAIN_DB = -3.0  # s3prl EFFECTS: channels 1, rate 16000, gain -3.0


def speech_commands_hash_percentage(filename: str) -> float:
    """s3prl's stable hash of a Speech Commands file name, in [0, 100].

    The speaker part (the name before ``_nohash_``) is sha1-hashed so that all clips of a speaker land in the
    same split (s3prl ``downstream/speech_commands/expert.py`` ``split_dataset``).
    """
    speaker = re.sub(r"_nohash_.*$", "", Path(filename).name)
    digest = int(hashlib.sha1(speaker.encode("utf-8")).hexdigest(), 16)
    return (digest % (_KS1_MAX_UTTERANCES + 1)) * (100.0 / _KS1_MAX_UTTERANCES)


def speech_commands_v1(root: str | Path, test_root: str | Path) -> TaskData:
    """Speech Commands v0.01 in SUPERB's 12-class KS1 setting, exactly as s3prl builds it.

    * train/dev: every word folder of ``root``; hash percentage < 10 -> dev, < 20 -> dropped (the v0.01
      testing portion), else train. ``validation_list.txt``/``testing_list.txt`` are not read. Words outside
      the ten keywords become ``_unknown_``.
    * ``_silence_``: every ``root/_background_noise_/*.wav``, added to **both** train and dev (s3prl builds
      both from the same folder), each served as a random 1 s crop when loaded.
    * test: ``test_root`` (``speech_commands_test_set_v0.01``), one folder per class including ``_silence_``
      and ``_unknown_``.
    * every clip gets s3prl's -3 dB gain. Train and dev are sampled class-balanced
      (``class_balanced_weights``).

    Args:
        root: the extracted ``speech_commands_v0.01`` folder.
        test_root: the extracted ``speech_commands_test_set_v0.01`` folder.
    """
    root, test_root = Path(root), Path(test_root)
    _require_dir(root, f"Speech Commands v0.01 root '{root}' is not a folder")
    noise_dir = _require_dir(
        root / "_background_noise_",
        f"Speech Commands v0.01 root '{root}' has no _background_noise_/ folder (source of _silence_ clips)",
    )
    _require_dir(
        test_root,
        f"Speech Commands test root '{test_root}' is not a folder (expected speech_commands_test_set_v0.01)",
    )
    index = {c: i for i, c in enumerate(KS1_CLASSES)}
    unknown, silence = index["_unknown_"], index["_silence_"]
    splits: dict[str, list[Clip]] = {"train": [], "dev": [], "test": []}
    for word in _speech_commands_words(root):
        label = index[word] if word in KS1_KEYWORDS else unknown
        for path in sorted((root / word).glob("*.wav")):
            pct = speech_commands_hash_percentage(path.name)
            split = "dev" if pct < 10 else None if pct < 20 else "train"
            if split is not None:
                uid = f"{word}/{path.name}"
                splits[split].append(Clip(path, label, split, uid=uid, gain_db=_KS1_GAIN_DB))
    if not splits["train"] or not splits["dev"]:
        raise DatasetLayoutError(f"Speech Commands v0.01 root '{root}' gives no word clips to train or dev")
    noises = sorted(noise_dir.glob("*.wav"))
    if not noises:
        raise DatasetLayoutError(f"'{noise_dir}' has no .wav files; KS1 draws its _silence_ clips from them")
    for split in ("train", "dev"):
        for p in noises:
            uid = f"_background_noise_/{p.name}"
            splits[split].append(
                Clip(p, silence, split, uid, crop_secs=1.0, random_crop=True, gain_db=_KS1_GAIN_DB)
            )
    for class_dir in sorted(d for d in test_root.iterdir() if d.is_dir() and not d.name.startswith(".")):
        if class_dir.name not in index:
            raise DatasetLayoutError(
                f"test folder '{class_dir}' is not one of the 12 KS1 classes {KS1_CLASSES}"
            )
        splits["test"] += [
            Clip(p, index[class_dir.name], "test", uid=f"{class_dir.name}/{p.name}", gain_db=_KS1_GAIN_DB)
            for p in sorted(class_dir.glob("*.wav"))
        ]
    if not splits["test"]:
        raise DatasetLayoutError(f"Speech Commands test root '{test_root}' has no class folders with .wav")
    return TaskData("speech_commands_v1", list(KS1_CLASSES), False, splits, "dev", sample_rate_hint=16000)


# ----------------------------------------------------------------------------------------------------------
# VoxCeleb1 speaker identification (SID)
# ----------------------------------------------------------------------------------------------------------
_VOX_NUM_SPEAKERS = 1251
_VOX_FIRST_ID = 10001
_VOX_SPLITS = {"1": "train", "2": "dev", "3": "test"}
_VOX_LINE = re.compile(r"^(id(\d+))/[^/\s]+/[^/\s]+\.wav$")


def voxceleb1(
    root: str | Path, split_file: str | Path | None = None, max_timestep: int | None = 128_000
) -> TaskData:
    """VoxCeleb1 speaker identification with the official ``iden_split.txt``.

    Split lines read ``<1|2|3> idXXXXX/<youtube id>/NNNNN.wav`` (1 train, 2 dev, 3 test). Files are found
    under ``root/*/wav/`` (``dev/wav`` and ``test/wav`` as distributed) or ``root/wav/``. Label =
    ``int(id[2:]) - 10001`` over 1,251 speakers (s3prl ``SpeakerClassifiDataset.build_label``). Train clips
    longer than ``max_timestep`` samples are randomly cropped when loaded; dev and test use full length.

    The split file and the speaker folders are checked up front. With more than ``EAGER_CHECK_LIMIT`` lines
    (the real set has 153,516) single files are left to the header scan of a run (``prepare_task``), which opens
    every file anyway, or to the loader.

    Args:
        root: VoxCeleb1 folder holding ``dev/wav`` and ``test/wav``.
        split_file: identification split; defaults to ``root/iden_split.txt``.
        max_timestep: train crop in samples at the native 16 kHz (s3prl ``max_timestep``); None keeps full
            length.
    """
    root = Path(root)
    _require_dir(root, f"VoxCeleb1 root '{root}' is not a folder")
    split_path = Path(split_file) if split_file is not None else root / "iden_split.txt"
    _require_file(split_path, f"VoxCeleb1 split file '{split_path}' does not exist (iden_split.txt expected)")
    wav_dirs = sorted(d for d in root.glob("*/wav") if d.is_dir())
    if (root / "wav").is_dir():
        wav_dirs.append(root / "wav")
    if not wav_dirs:
        raise DatasetLayoutError(
            f"VoxCeleb1 root '{root}' has no */wav/ or wav/ folder (expected dev/wav and test/wav)"
        )
    # Speaker folder -> wav dirs holding it: one listdir per wav dir instead of one stat per file.
    speaker_dirs: dict[str, list[Path]] = {}
    for wav_dir in wav_dirs:
        for d in wav_dir.iterdir():
            if d.is_dir():
                speaker_dirs.setdefault(d.name, []).append(wav_dir)
    crop_secs = max_timestep / 16000 if max_timestep else None
    splits: dict[str, list[Clip]] = {s: [] for s in SPLITS}
    for line_no, line in enumerate(split_path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        match = _VOX_LINE.match(fields[1]) if len(fields) == 2 else None
        if match is None or fields[0] not in _VOX_SPLITS:
            raise DatasetLayoutError(
                f"'{split_path}' line {line_no}: expected '<1|2|3> idXXXXX/<video>/NNNNN.wav', "
                f"got {line.strip()!r}"
            )
        speaker, rel = match.group(1), fields[1]
        label = int(match.group(2)) - _VOX_FIRST_ID
        if not 0 <= label < _VOX_NUM_SPEAKERS:
            raise DatasetLayoutError(
                f"'{split_path}' line {line_no}: speaker {speaker} outside "
                f"id{_VOX_FIRST_ID}..id{_VOX_FIRST_ID + _VOX_NUM_SPEAKERS - 1}"
            )
        dirs = speaker_dirs.get(speaker)
        if not dirs:
            raise DatasetLayoutError(
                f"'{split_path}' line {line_no}: speaker folder {speaker}/ not found under "
                f"{[str(d) for d in wav_dirs]}"
            )
        path = dirs[0] / rel
        if len(dirs) > 1:  # a speaker split across wav dirs (not the case in the official release)
            path = next((d / rel for d in dirs if (d / rel).is_file()), path)
        split = _VOX_SPLITS[fields[0]]
        uid = "-".join(Path(rel).with_suffix("").parts)  # s3prl path2name: id10001-1zcIwhmdeo4-00001
        # s3prl crops only the training clips; dev and test are scored on whole utterances.
        crop = crop_secs if split == "train" else None
        splits[split].append(Clip(path, label, split, uid=uid, crop_secs=crop, random_crop=crop is not None))
    _require_splits("VoxCeleb1 split file", splits, split_path)
    _check_files_exist([c for s in SPLITS for c in splits[s]], split_path)
    classes = [f"id{_VOX_FIRST_ID + i}" for i in range(_VOX_NUM_SPEAKERS)]
    return TaskData("voxceleb1", classes, False, splits, selection_split="dev", sample_rate_hint=16000)


# ----------------------------------------------------------------------------------------------------------
# IEMOCAP emotion recognition (ER)
# ----------------------------------------------------------------------------------------------------------
IEMOCAP_CLASSES = ["neu", "hap", "ang", "sad"]
_IEMOCAP_MERGE = {"exc": "hap"}  # s3prl IEMOCAP_preprocess.py: excited is merged into happy


def _read_iemocap_session(root: Path, session: int, skip_missing: bool) -> list[Clip]:
    base = root / f"Session{session}"
    hint = "expected IEMOCAP_full_release/Session1..Session5 with sentences/wav/ and dialog/EmoEvaluation/"
    wav_root = _require_dir(
        base / "sentences" / "wav", f"IEMOCAP root '{root}' has no Session{session}/sentences/wav/; {hint}"
    )
    label_dir = _require_dir(
        base / "dialog" / "EmoEvaluation",
        f"IEMOCAP root '{root}' has no Session{session}/dialog/EmoEvaluation/; {hint}",
    )
    wavs = {p.stem: p for p in wav_root.rglob("*.wav") if not p.name.startswith(".")}
    index = {c: i for i, c in enumerate(IEMOCAP_CLASSES)}
    clips = []
    for label_file in sorted(p for p in label_dir.glob("*.txt") if not p.name.startswith(".")):
        text = label_file.read_text(encoding="utf-8", errors="replace")
        for line_no, line in enumerate(text.splitlines(), start=1):
            # Only "[start - end]<TAB>utterance<TAB>emotion<TAB>[V, A, D]" lines carry the consensus label.
            if not line.startswith("["):
                continue
            fields = [f for f in line.split("\t") if f.strip()]
            if len(fields) < 3:
                raise DatasetLayoutError(
                    f"'{label_file}' line {line_no}: expected '[start - end]<TAB>utterance<TAB>emotion<TAB>"
                    f"[V, A, D]', got {line!r}"
                )
            utt, emotion = fields[1].strip(), fields[2].strip()
            emotion = _IEMOCAP_MERGE.get(emotion, emotion)
            if emotion not in index:
                continue
            if utt not in wavs:
                if skip_missing:  # s3prl's preprocessing silently drops these
                    continue
                raise DatasetLayoutError(f"'{label_file}' line {line_no}: no {utt}.wav under '{wav_root}'")
            clips.append(Clip(wavs[utt], index[emotion], "", uid=utt, fold=session))
    return clips


def iemocap(
    root: str | Path, fold: int, valid_ratio: float = 0.2, seed: int = 0, skip_missing: bool = False
) -> TaskData:
    """IEMOCAP 4-class emotion recognition, leave-one-session-out, as s3prl's SUPERB ER task.

    Labels come from ``Session*/dialog/EmoEvaluation/*.txt`` lines such as
    ``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]``; only neu, hap, ang,
    sad and exc (merged into hap) are kept: neu 0, hap 1, ang 2, sad 3. Audio is
    ``Session*/sentences/wav/<dialog>/<utterance>.wav``.

    Fold k tests on Session k. The other sessions are split into train and dev as s3prl does: a permutation
    from a generator seeded with ``seed``, the first ``int((1 - valid_ratio) * n)`` for train (s3prl:
    ``torch.manual_seed(0)`` then ``random_split``). Utterances are ordered by session, label file and line.

    Args:
        root: the ``IEMOCAP_full_release`` folder.
        fold: held-out session, 1..5.
        valid_ratio: dev fraction of the training sessions (s3prl ``valid_ratio: 0.2``).
        seed: seed of the train/dev permutation.
        skip_missing: drop labelled utterances whose wav is absent, as s3prl's preprocessing does, instead of
            raising.
    """
    fold = _check_fold("IEMOCAP", fold, 5)
    if not 0.0 <= valid_ratio < 1.0:
        raise ValueError(f"valid_ratio must be in [0, 1), got {valid_ratio}")
    root = Path(root)
    _require_dir(root, f"IEMOCAP root '{root}' is not a folder (expected IEMOCAP_full_release)")
    sessions = {s: _read_iemocap_session(root, s, skip_missing) for s in range(1, 6)}
    for s, clips in sessions.items():
        if not clips:
            raise DatasetLayoutError(f"IEMOCAP Session{s} under '{root}' has no neu/hap/ang/sad/exc label")
    pool = [c for s in range(1, 6) if s != fold for c in sessions[s]]
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
    n_train = int((1 - valid_ratio) * len(pool))
    splits = {
        "train": [replace(pool[i], split="train") for i in order[:n_train]],
        "dev": [replace(pool[i], split="dev") for i in order[n_train:]],
        "test": [replace(c, split="test") for c in sessions[fold]],
    }
    return TaskData("iemocap", list(IEMOCAP_CLASSES), False, splits, "dev", sample_rate_hint=16000)


# ----------------------------------------------------------------------------------------------------------
# Generic layouts: class folders and manifests
# ----------------------------------------------------------------------------------------------------------
def _class_folders(directory: Path) -> list[Path]:
    return sorted(d for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))


def folder(root: str | Path, seed: int = 0, ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> TaskData:
    """Any dataset laid out as one sub-folder per class.

    Either ``root/{train,dev,test}/<class>/<files>`` (all three split folders required when any exists) or
    ``root/<class>/<files>``, split per class with a seeded ``ratios`` (train, dev, test) draw. Classes are
    the sorted folder names; audio files (``AUDIO_EXTENSIONS``) are found recursively.

    Args:
        root: dataset folder.
        seed: seed of the split draw for the flat layout.
        ratios: train/dev/test fractions for the flat layout.
    """
    root = Path(root)
    _require_dir(root, f"folder dataset root '{root}' is not a folder")
    present = [s for s in SPLITS if (root / s).is_dir()]
    split_dirs = {s: root / s for s in SPLITS} if present else {None: root}
    if present and len(present) < len(SPLITS):
        missing = [s for s in SPLITS if s not in present]
        raise DatasetLayoutError(f"folder dataset '{root}' has {present}/ but no {missing}/ split folder(s)")
    class_names = sorted({d.name for base in split_dirs.values() for d in _class_folders(base)})
    if not class_names:
        raise DatasetLayoutError(f"folder dataset '{root}' has no class sub-folders")
    index = {c: i for i, c in enumerate(class_names)}
    found: list[tuple[Path, int, str | None]] = []
    for split, base in split_dirs.items():
        for class_dir in _class_folders(base):
            files = _audio_files(class_dir)
            if not files:
                raise DatasetLayoutError(
                    f"class folder '{class_dir}' has no audio files ({', '.join(AUDIO_EXTENSIONS)})"
                )
            found += [(p, index[class_dir.name], split) for p in files]
    if not present:
        assigned = _stratified_split([lab for _, lab, _ in found], ratios, seed)
        found = [(p, lab, s) for (p, lab, _), s in zip(found, assigned, strict=True)]
    splits: dict[str, list[Clip]] = {s: [] for s in SPLITS}
    for path, label, split in found:
        splits[split].append(Clip(path, label, split, uid=path.relative_to(root).as_posix()))
    _require_splits("folder dataset", splits, root)
    rule = {"source": "layout"} if present else {"source": "drawn", "seed": seed, "ratios": list(ratios)}
    return TaskData("folder", class_names, False, splits, selection_split="dev", split_rule=rule)


def _read_manifest_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) pairs from a CSV (header ``path,label[,split]``) or JSONL manifest."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                raise DatasetLayoutError(
                    f"manifest '{path}' must have a header with path,label[,split]; got {reader.fieldnames}"
                )
            return [(reader.line_num, dict(row)) for row in reader]
    if suffix in (".jsonl", ".json"):
        rows = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetLayoutError(f"manifest '{path}' line {line_no}: invalid JSON: {err}") from err
            if not isinstance(row, dict):
                raise DatasetLayoutError(f"manifest '{path}' line {line_no}: expected an object, got {row!r}")
            rows.append((line_no, row))
        return rows
    raise DatasetLayoutError(f"manifest '{path}' must end in .csv or .jsonl")


def manifest(path: str | Path, seed: int = 0, ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> TaskData:
    """A dataset listed in a CSV or JSONL manifest.

    CSV: header ``path,label[,split][,id]``. JSONL: one ``{"path": ..., "label": ..., "split": ..., "id":
    ...}`` object per line; a JSONL ``label`` may be a list of names, which makes the task multi-label.
    Relative paths are resolved against the manifest's folder. Labels are class names, mapped to indices of
    the sorted names. Without a split column the rows are split per class by a seeded ``ratios`` draw; with
    one, every row needs a split in ``train``/``dev``/``test``.

    Args:
        path: manifest file (``.csv`` or ``.jsonl``).
        seed: seed of the split draw when the manifest has no split.
        ratios: train/dev/test fractions for that draw.
    """
    path = _require_file(Path(path), f"manifest '{path}' does not exist")
    rows = _read_manifest_rows(path)
    if not rows:
        raise DatasetLayoutError(f"manifest '{path}' lists no clips")
    entries: list[tuple[Path, list[str], str | None, str]] = []
    multilabel = False
    for line_no, row in rows:
        if not row.get("path") or row.get("label") in (None, "", []):
            raise DatasetLayoutError(
                f"manifest '{path}' line {line_no}: 'path' and 'label' are required, got {row}"
            )
        label = row["label"]
        multilabel |= isinstance(label, list)
        names = [str(x) for x in label] if isinstance(label, list) else [str(label)]
        split = row.get("split") or None
        if split is not None and split not in SPLITS:
            raise DatasetLayoutError(
                f"manifest '{path}' line {line_no}: split {split!r} is not one of {list(SPLITS)}"
            )
        audio = Path(row["path"])
        audio = audio if audio.is_absolute() else path.parent / audio
        entries.append((audio, names, split, str(row.get("id") or row["path"])))
    with_split = sum(e[2] is not None for e in entries)
    if 0 < with_split < len(entries):
        first = next(line for (line, _), e in zip(rows, entries, strict=True) if e[2] is None)
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
        split_names = _stratified_split(strata, ratios, seed)
    splits: dict[str, list[Clip]] = {s: [] for s in SPLITS}
    for (audio, _, _, uid), label, split in zip(entries, labels, split_names, strict=True):
        splits[split].append(Clip(audio, label, split, uid=uid))
    _require_splits("manifest", splits, path)
    _check_files_exist([c for s in SPLITS for c in splits[s]], path)
    rule = {"source": "layout"} if with_split else {"source": "drawn", "seed": seed, "ratios": list(ratios)}
    return TaskData("manifest", classes, multilabel, splits, selection_split="dev", split_rule=rule)


READERS: dict[str, Callable[..., TaskData]] = {
    "as20k": as20k,
    "esc50": esc50,
    "speech_commands_v2": speech_commands_v2,
    "speech_commands_v1": speech_commands_v1,
    "voxceleb1": voxceleb1,
    "iemocap": iemocap,
    "folder": folder,
    "manifest": manifest,
}


# ----------------------------------------------------------------------------------------------------------
# Preparing a task for a run: header scan, label checks, training crops, length order
# ----------------------------------------------------------------------------------------------------------
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
        raise DatasetLayoutError(f"{data.name}: audio file {path} cannot be used ({err.detail}){more}; remove or "
                                 "repair it, or let the run skip and count unusable files (without --strict-audio: "
                                 "data.on_bad_audio=skip)")
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
            f"{data.name}: the train split has only {len(train)} class ({_class_names(data, train)}); a classifier "
            f"needs at least 2 (a 1-class task scores 1.0 whatever the model){skipped}")
    for split in [s for s in SPLITS if s != "train" and s in data.splits]:
        unseen = seen(data.splits[split]) - train
        if unseen:
            raise DatasetLayoutError(
                f"{data.name}: class(es) {_class_names(data, unseen)} appear in the {split} split but never in "
                f"train, so no model can learn them; move some of their clips to train or remove them{skipped}")


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


def _splits_digest(data: TaskData) -> str:
    """sha256 (16 hex digits) of every clip's (split, id, label): which clip is in which split."""
    rows = sorted(f"{s}\t{c.uid}\t{c.label}" for s, clips in data.splits.items() for c in clips)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------
# Loading audio
# ----------------------------------------------------------------------------------------------------------
def read_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    """Mono float32 waveform in [-1, 1) at ``sample_rate``.

    Uses ``upstream.frontend.load_audio`` when available so every part of the project decodes audio the same
    way; otherwise soundfile + soxr (HQ). Channels are averaged, as sox ``channels 1`` does in s3prl.

    Args:
        path: audio file.
        sample_rate: output rate in Hz.

    Returns:
        ``(S,)`` float32 tensor.

    Raises:
        ValueError: the file cannot be decoded or has no samples; the message names the file.
    """
    path = Path(path)
    if _frontend_load_audio is not None:
        wav, _ = _frontend_load_audio(path, target_sr=sample_rate, mono=True, downmix=True)
        wav = torch.as_tensor(wav, dtype=torch.float32).reshape(-1)
    else:
        import soundfile as sf
        import soxr

        try:
            data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError, OSError) as err:
            raise ValueError(f"cannot decode audio file '{path}': {err}") from err
        mono = data.mean(axis=1)
        if mono.size and sr != sample_rate:
            mono = soxr.resample(mono, sr, sample_rate, quality="HQ")
        wav = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
    if wav.numel() == 0:
        raise ValueError(f"audio file '{path}' has no samples")
    return wav


class ClipDataset(Dataset):
    """Audio clips at the upstream's sample rate, with the clip's crop and gain applied.

    Crops (``Clip.crop_secs``) apply only to audio longer than the crop. With ``random_crop`` the window
    position is drawn from torch's global generator in training, which DataLoader seeds per worker from the
    main process, so crops differ every epoch yet follow ``torch.manual_seed``. Outside training (KS1's dev
    ``_silence_`` clips) the position is drawn from ``(seed, index)``, so every evaluation sees the same
    audio; s3prl redraws it each time. A clip without ``random_crop`` keeps its first ``crop_secs``.

    Args:
        clips: records from a reader.
        sample_rate: upstream sample rate in Hz; files are resampled to it.
        classes: class names; labels index this list.
        multilabel: return float multi-hot ``(C,)`` labels instead of an int index.
        train: random crops drawn fresh (training) or reproducibly (evaluation).
        seed: seed of the evaluation crops.
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        sample_rate: int,
        classes: Sequence[str],
        multilabel: bool = False,
        train: bool = False,
        seed: int = 0,
    ) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        num_classes = len(classes)
        for clip in clips:
            labels = clip.label if isinstance(clip.label, list) else [clip.label]
            in_range = all(0 <= lab < num_classes for lab in labels)
            if isinstance(clip.label, list) != multilabel or not in_range:
                kind = "a list of class indices" if multilabel else "one class index"
                raise DatasetLayoutError(
                    f"clip '{clip.path}' has label {clip.label!r}; expected {kind} in 0..{num_classes - 1}"
                )
        self.clips = list(clips)
        self.sample_rate = sample_rate
        self.classes = list(classes)
        self.multilabel = multilabel
        self.train = train
        self.seed = seed

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor, str]:
        """Returns ``(wav (S,) float32, label, uid)``; the label is an int or a ``(C,)`` multi-hot vector."""
        clip = self.clips[index]
        if not clip.path.is_file():
            raise DatasetLayoutError(f"audio file '{clip.path}' (clip {clip.uid}) does not exist")
        try:
            wav = read_audio(clip.path, self.sample_rate)
        except (ValueError, RuntimeError, OSError) as err:
            raise DatasetLayoutError(f"cannot load clip {clip.uid} from '{clip.path}': {err}") from err
        wav = self._crop(wav, clip, index)
        if clip.gain_db:
            wav = wav * (10.0 ** (clip.gain_db / 20.0))
        if self.multilabel:
            label: int | torch.Tensor = torch.zeros(len(self.classes), dtype=torch.float32)
            label[clip.label] = 1.0
        else:
            label = int(clip.label)
        return wav, label, clip.uid

    def _crop(self, wav: torch.Tensor, clip: Clip, index: int) -> torch.Tensor:
        if clip.crop_secs is None:
            return wav
        length = max(1, round(clip.crop_secs * self.sample_rate))
        if wav.numel() <= length:
            return wav
        start = 0
        if clip.random_crop:
            span = wav.numel() - length + 1
            if self.train:
                start = int(torch.randint(span, ()).item())
            else:
                start = int(np.random.default_rng([self.seed, index]).integers(span))
        return wav[start : start + length]


def collate(
    batch: Sequence[tuple[torch.Tensor, int | torch.Tensor, str]],
) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    """Batch ``ClipDataset`` items without padding (upstreams take lengths).

    Returns:
        ``(wavs, labels, uids)``: a list of ``(S_i,)`` tensors, labels ``(B,)`` int64 or ``(B, C)`` float32,
        and the clip ids.
    """
    wavs, labels, uids = zip(*batch, strict=True)
    if isinstance(labels[0], torch.Tensor):
        label_tensor = torch.stack(labels)
    else:
        label_tensor = torch.tensor(labels, dtype=torch.long)
    return list(wavs), label_tensor, list(uids)


def class_balanced_weights(clips: Sequence[Clip]) -> torch.Tensor:
    """Per-clip weights ``N / count(label)`` for ``WeightedRandomSampler``, as s3prl's KS1 train and dev
    loaders.

    Args:
        clips: single-label clips.

    Returns:
        ``(N,)`` float64 weights; every class gets the same total weight.
    """
    labels = [c.label for c in clips]
    if any(isinstance(lab, list) for lab in labels):
        raise ValueError("class_balanced_weights needs single-label clips")
    counts: dict[int, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    return torch.tensor([len(labels) / counts[lab] for lab in labels], dtype=torch.float64)
