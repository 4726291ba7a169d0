"""What a reader returns (``TaskData``), what the header scan found (``AudioScan``) and the ``data.*``
settings of a run (``DataConfig``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .clips import Clip, ClipDataset
from .splits import check_ratios

__all__ = ["DataConfig", "AudioScan", "TaskData", "splits_digest"]


@dataclass
class DataConfig:
    """How a downstream run treats its dataset (``data.*`` in the run config; saved with the run).

    ``null`` for ``max_train_secs`` / ``group_by_length`` / ``split_*`` means the task's default
    (``downstream.tasks.TaskSpec``), so one config serves every task.
    """

    # skip: unusable files (empty, unreadable header, text, random bytes, NaN/inf samples) are left out and
    # counted in the log and the result record; error: the dataset is refused, naming the first
    # (--strict-audio)
    on_bad_audio: Literal["skip", "error"] = "skip"
    # training clips longer than this are cropped at a random position (each epoch anew), so one long
    # recording cannot make its batch cost its length; null = task default (10 s for folder/manifest, the
    # paper tasks keep their recipes' crops), 0 = never crop
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
            raise ValueError(f"max_train_secs must be >= 0 seconds (0 = never crop), "
                             f"got {self.max_train_secs}")
        if self.group_window < 1:
            raise ValueError(f"group_window must be >= 1 micro-batch, got {self.group_window}")
        if self.split_ratios is not None:
            check_ratios(self.split_ratios, "split_ratios")


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
        name: the reader's corpus name (``as20k``, ``esc50``, ..., ``folder``, ``manifest``).
        classes: class names; a clip's label indexes this list.
        multilabel: labels are index lists (score with mAP, train with BCE) rather than one index.
        splits: ``{"train": [...], "dev": [...], "test": [...]}``; ``dev`` is absent for AS-20K and ESC-50.
        selection_split: split that picks the checkpoint/epoch: ``downstream.tasks.TaskSpec.read`` sets the
            task's ``TaskSpec.selection_split``; a reader's own output has ``dev``, or ``test`` without a dev
            split (AS-20K, ESC-50), the same for every registered task.
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
    selection_split: str = ""
    sample_rate_hint: int | None = None
    audio: AudioScan | None = None
    root_label: str = ""
    split_rule: dict = field(default_factory=dict)
    max_train_secs: float | None = None
    group_by_length: bool = False
    group_window: int = 50
    _noted_rates: set = field(default_factory=set, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.selection_split:
            self.selection_split = "dev" if "dev" in self.splits else "test"

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
        total = sum(self.audio.sample_rates.values())
        line = f"{self.name}: resampling {sum(other.values())} of {total} files " \
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
                               "splits_sha256": splits_digest(self), "split": dict(self.split_rule),
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


def splits_digest(data: TaskData) -> str:
    """sha256 (16 hex digits) of every clip's (split, id, label): which clip is in which split."""
    rows = sorted(f"{s}\t{c.uid}\t{c.label}" for s, clips in data.splits.items() for c in clips)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]
