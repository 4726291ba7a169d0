"""Task registry: which reader, loss, metric, folds and sampling each downstream task uses.

Only this module knows dataset names. Each :class:`TaskSpec` names a reader of ``downstream.datasets.READERS``
and how to derive its arguments from one data root (``--data-root`` or ``$ASTBENCH_DATA``):

=====================  ===================================================================================
task                   expected under the data root
=====================  ===================================================================================
``as20k``              ``audioset/`` with ``balanced_train_data_type1_2_mean.json``, ``eval_data.json``,
                       ``class_labels_indices.csv`` (AST/SSAST datafiles)
``esc50``              ``ESC-50-master/`` (``audio/``, ``meta/esc50.csv``) as distributed
``speech_commands_v2`` ``speech_commands_v0.02/`` (word folders, ``validation_list.txt``, ``testing_list.txt``)
``speech_commands_v1`` ``speech_commands_v0.01/`` (train/dev) and ``speech_commands_test_set_v0.01/`` (test)
``voxceleb1``          ``VoxCeleb1/`` (``dev/wav``, ``test/wav``, ``iden_split.txt``)
``iemocap``            ``IEMOCAP_full_release/`` (``Session1..5``)
``folder``             the data root itself is the class-folder dataset
``manifest``           the data root is the manifest file (CSV or JSONL)
=====================  ===================================================================================

Losses and metrics follow the official recipes: AS-20K is multi-label (BCE, mAP); the SSAST KS2
fine-tuning recipe trains with BCE on one-hot targets (``run_sc.sh`` ``loss=BCE``) while the frozen probe keeps
s3prl's CE; every other task uses CE and top-1 accuracy.

:meth:`TaskSpec.read` reads a task and prepares it for a run (``downstream.datasets.prepare_task``: header scan,
unusable files skipped and counted, label checks, training crops, length order), with the task's defaults
under ``DataConfig`` (``data.*``): the paper tasks keep their recipes (their own crops, uniformly random
training batches, official splits); ``folder`` and ``manifest``, which hold whatever a user recorded, crop
training clips to 10 s, group training batches by length and draw their split from ``data.split_seed`` /
``data.split_ratios`` (``--split-seed``, ``--split-ratios``; default seed 0 and 80/10/10) when the layout gives
none.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .datasets import READERS, DataConfig, DatasetLayoutError, TaskData, prepare_task

DATA_ENV = "ASTBENCH_DATA"


@dataclass(frozen=True)
class TaskSpec:
    """How one downstream task is read, trained and scored.

    Attributes:
        name: registry key (``-d``).
        reader: key of ``READERS``.
        reader_kwargs: data root -> reader keyword arguments (fold excluded).
        metric: ``'mAP'`` (multi-label) or ``'accuracy'``.
        loss: frozen-probe loss, ``'ce'`` or ``'bce'``.
        finetune_loss: loss under ``-f`` (SSAST's KS2 recipe uses BCE).
        folds: valid ``--fold`` values, or () for tasks without folds.
        balanced_sampling: train and dev loaders draw class-balanced (s3prl KS1 ``WeightedRandomSampler``).
        layout: one line saying what the data root must hold.
        drawn_split: the reader draws train/dev/test from ``seed`` and ``ratios`` when the layout has no split.
        max_train_secs: default training crop in seconds (``DataConfig.max_train_secs``); None: the reader's own.
        group_by_length: default of ``DataConfig.group_by_length``.
    """

    name: str
    reader: str
    reader_kwargs: Callable[[Path], dict]
    metric: str = "accuracy"
    loss: str = "ce"
    finetune_loss: str = "ce"
    folds: tuple[int, ...] = ()
    balanced_sampling: bool = False
    layout: str = ""
    drawn_split: bool = False
    max_train_secs: float | None = None
    group_by_length: bool = False

    def loss_for(self, finetune: bool) -> str:
        return self.finetune_loss if finetune else self.loss

    def check_fold(self, fold: int | None) -> int | None:
        if not self.folds:
            if fold is not None:
                raise ValueError(f"task {self.name!r} has no folds, but --fold {fold} was given")
            return None
        if fold is None:
            raise ValueError(f"task {self.name!r} needs --fold, one of {list(self.folds)} (one fold per run)")
        if fold not in self.folds:
            raise ValueError(f"--fold {fold} is out of range for task {self.name!r}; valid: {list(self.folds)}")
        return fold

    def read(self, data_root: str | Path | None, fold: int | None = None, data_cfg: DataConfig | None = None,
             log: Callable[[str], None] = print) -> TaskData:
        """Read the task's data and prepare it for a run (``prepare_task``) under ``data_cfg``.

        Raises:
            DatasetLayoutError: naming what is missing or unusable (a file, a class, a split).
            ValueError: a ``data.*`` setting that does not apply to this task.
        """
        fold = self.check_fold(fold)
        cfg = data_cfg or DataConfig()
        given = data_root if data_root is not None else os.environ.get(DATA_ENV)
        root = resolve_data_root(data_root)
        kwargs = self.reader_kwargs(root)
        if fold is not None:
            kwargs["fold"] = fold
        split_rule: dict = {"source": "layout"}
        if self.drawn_split:
            seed = 0 if cfg.split_seed is None else cfg.split_seed
            ratios = (0.8, 0.1, 0.1) if cfg.split_ratios is None else tuple(cfg.split_ratios)
            kwargs.update(seed=seed, ratios=ratios)
        elif cfg.split_seed is not None or cfg.split_ratios is not None:
            raise ValueError(f"task {self.name!r} has fixed splits; data.split_seed / data.split_ratios "
                             "(--split-seed, --split-ratios) apply to folder and manifest only")
        try:
            data = READERS[self.reader](**kwargs)
        except DatasetLayoutError as err:
            raise DatasetLayoutError(f"{err}\n(task {self.name!r} expects under the data root: {self.layout})") \
                from None
        split_rule = data.split_rule or split_rule
        if split_rule["source"] == "layout" and (cfg.split_seed is not None or cfg.split_ratios is not None):
            log(f"{self.name}: the layout gives the train/dev/test splits; data.split_seed / data.split_ratios "
                "are not used")
        max_secs = self.max_train_secs if cfg.max_train_secs is None else cfg.max_train_secs
        grouped = self.group_by_length if cfg.group_by_length is None else cfg.group_by_length
        return prepare_task(data, cfg.on_bad_audio, max_secs, grouped, cfg.group_window,
                            base=root if root.is_dir() else root.parent, root_label=_root_label(given),
                            split_rule=split_rule, log=log)


def _root_label(given: str | Path | None) -> str:
    """The data root for a record: as given when relative, else only its last component (no machine path)."""
    if not given:
        return ""
    path = Path(given)
    return path.as_posix() if not path.is_absolute() and not str(given).startswith("~") else path.name


def resolve_data_root(data_root: str | Path | None) -> Path:
    """``--data-root`` if given, else ``$ASTBENCH_DATA``; raises naming both when neither is set or exists."""
    if data_root is None:
        data_root = os.environ.get(DATA_ENV)
        if not data_root:
            raise DatasetLayoutError(f"no data root: pass --data-root or set ${DATA_ENV}")
    root = Path(data_root).expanduser()
    if not root.exists():
        raise DatasetLayoutError(f"data root '{root}' does not exist")
    return root


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    if spec.reader not in READERS:
        raise ValueError(f"task {spec.name!r}: unknown reader {spec.reader!r}")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(sorted(TASKS))}")
    return TASKS[name]


register_task(TaskSpec("as20k", "as20k", lambda r: {"root": r / "audioset"}, metric="mAP", loss="bce",
                       finetune_loss="bce", layout="audioset/{balanced_train_data_type1_2_mean,eval_data}.json"
                       " + class_labels_indices.csv"))
register_task(TaskSpec("esc50", "esc50", lambda r: {"root": r / "ESC-50-master"}, folds=(1, 2, 3, 4, 5),
                       layout="ESC-50-master/{audio/,meta/esc50.csv}"))
register_task(TaskSpec("speech_commands_v2", "speech_commands_v2", lambda r: {"root": r / "speech_commands_v0.02"},
                       finetune_loss="bce", layout="speech_commands_v0.02/ (word folders + *_list.txt)"))
register_task(TaskSpec("speech_commands_v1", "speech_commands_v1",
                       lambda r: {"root": r / "speech_commands_v0.01",
                                  "test_root": r / "speech_commands_test_set_v0.01"},
                       balanced_sampling=True,
                       layout="speech_commands_v0.01/ and speech_commands_test_set_v0.01/"))
register_task(TaskSpec("voxceleb1", "voxceleb1", lambda r: {"root": r / "VoxCeleb1"},
                       layout="VoxCeleb1/{dev/wav,test/wav,iden_split.txt}"))
register_task(TaskSpec("iemocap", "iemocap", lambda r: {"root": r / "IEMOCAP_full_release"}, folds=(1, 2, 3, 4, 5),
                       layout="IEMOCAP_full_release/Session1..5"))
# user data: recordings of any length, so training crops (10 s) and length-grouped batches by default
register_task(TaskSpec("folder", "folder", lambda r: {"root": r}, drawn_split=True, max_train_secs=10.0,
                       group_by_length=True, layout="the data root is itself the class-folder dataset"))
register_task(TaskSpec("manifest", "manifest", lambda r: {"path": r}, drawn_split=True, max_train_secs=10.0,
                       group_by_length=True, layout="the data root is the manifest file (.csv or .jsonl)"))


def data_overrides(split_seed: int | None = None, split_ratios: str | None = None,
                   strict_audio: bool = False) -> list[str]:
    """The ``data.*`` config overrides (``key=value``) that the CLI flags ``--split-seed``, ``--split-ratios``
    (``"0.8,0.1,0.1"``) and ``--strict-audio`` stand for; ValueError naming the flag for a bad value."""
    out = []
    if split_seed is not None:
        out.append(f"data.split_seed={int(split_seed)}")
    if split_ratios is not None:
        try:
            ratios = tuple(float(x) for x in split_ratios.split(","))
            DataConfig(split_ratios=ratios)  # the same check as the config's
        except ValueError as err:
            detail = err if "must be" in str(err) else "expected numbers"
            raise ValueError(f"--split-ratios {split_ratios!r}: {detail}") from None
        out.append(f"data.split_ratios=[{', '.join(repr(r) for r in ratios)}]")
    if strict_audio:
        out.append("data.on_bad_audio=error")
    return out
