"""Task registry: the one place that knows a downstream task: reader, folds, loss, metric, selection rule.

Every other module asks a task's :class:`TaskSpec` (``get_task(name)``) instead of comparing names. Each spec
holds its corpus reader (``downstream.datasets``) and how to derive the reader's arguments from one data root
(``--data-root`` or ``$ASTBENCH_DATA``):

=====================  ==========================================================================
task                   expected under the data root
=====================  ==========================================================================
``as20k``              ``audioset/`` with ``balanced_train_data_type1_2_mean.json``,
                       ``eval_data.json``, ``class_labels_indices.csv`` (AST/SSAST datafiles)
``esc50``              ``ESC-50-master/`` (``audio/``, ``meta/esc50.csv``) as distributed
``speech_commands_v2`` ``speech_commands_v0.02/`` (word folders, ``validation_list.txt``,
                       ``testing_list.txt``)
``speech_commands_v1`` ``speech_commands_v0.01/`` (train/dev) and
                       ``speech_commands_test_set_v0.01/`` (test)
``voxceleb1``          ``VoxCeleb1/`` (``dev/wav``, ``test/wav``, ``iden_split.txt``)
``iemocap``            ``IEMOCAP_full_release/`` (``Session1..5``)
``folder``             the data root itself is the class-folder dataset
``manifest``           the data root is the manifest file (CSV or JSONL)
=====================  ==========================================================================

Losses and metrics follow the official recipes: AS-20K is multi-label (BCE, mAP, with mAUC and d' reported
beside it as AST/SSAST do); the SSAST KS2 fine-tuning recipe trains with BCE on one-hot targets
(``run_sc.sh`` ``loss=BCE``) while the frozen probe keeps s3prl's CE; every other task uses CE and top-1
accuracy. A loss or a metric is a :class:`Loss` / :class:`Metric` member, which computes itself: no other
module compares names.

Model selection: every run evaluates ``TaskSpec.selection_split`` (``dev``; ``test`` for AS-20K and ESC-50,
which have no dev split: AS-20K's recipe evaluates the eval set every epoch) and keeps its best checkpoint.
ESC-50 then follows SSAST's ``get_esc_result.py``: ``TaskSpec.select_runs`` picks one step for all five fold
runs on the fold-averaged test curve, and the suites record the folds re-scored at it under the split name
``TaskSpec.selected_split``.

:meth:`TaskSpec.read` reads a task and prepares it for a run (``downstream.datasets.prepare_task``: header
scan, unusable files skipped and counted, label checks, training crops, length order), with the task's
defaults under ``DataConfig`` (``data.*``): the paper tasks keep their recipes (their own crops, uniformly
random training batches, official splits); ``folder`` and ``manifest``, which hold whatever a user recorded,
crop training clips to 10 s, group training batches by length and draw their split from ``data.split_seed``
/ ``data.split_ratios`` (``--split-seed``, ``--split-ratios``; default seed 0 and 80/10/10) when the layout
gives none.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import torch
import torch.nn.functional as F

from . import metrics
from .datasets import (
    DataConfig,
    DatasetLayoutError,
    TaskData,
    as20k,
    esc50,
    folder,
    iemocap,
    manifest,
    prepare_task,
    speech_commands_v1,
    speech_commands_v2,
    voxceleb1,
)

__all__ = ["Loss", "Metric", "TaskSpec", "TASKS", "register_task", "get_task", "resolve_data_root",
           "data_overrides", "DATA_ENV", "FOLD_AVERAGED_SPLIT"]

DATA_ENV = "ASTBENCH_DATA"
# Split name of the ESC-50 fold records re-scored at the one step chosen on the fold-averaged test curve.
FOLD_AVERAGED_SPLIT = "test@fold-avg-step"


class Loss(StrEnum):
    """A training loss; the member is its name in configs (``"ce"``, ``"bce"``) and computes itself."""

    CE = "ce"  # cross-entropy on class indices (the argmax of mixed targets, as SSAST)
    BCE = "bce"  # binary cross-entropy on multi-hot / one-hot / mixed targets (AS-20K; SSAST KS2 recipe)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean loss of ``(B, C)`` logits against ``(B,)`` class indices or ``(B, C)`` targets."""
        logits = logits.float()
        if self is Loss.BCE:
            target = labels.float() if labels.ndim == 2 else F.one_hot(labels, logits.shape[-1]).float()
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.cross_entropy(logits, labels.argmax(-1) if labels.ndim == 2 else labels)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """What the model trained with this loss says per class: softmax (CE) or per-class sigmoid (BCE)."""
        return logits.float().sigmoid() if self is Loss.BCE else logits.float().softmax(-1)

    def __reduce_ex__(self, protocol: object) -> tuple:
        return str, (self.value,)  # pickled (e.g. in a checkpoint) as its plain name


class Metric(StrEnum):
    """An evaluation metric; the member is the name records carry (``"accuracy"``, ``"mAP"``).

    Higher is better for every member (a run keeps the checkpoint with the highest value).
    """

    ACCURACY = "accuracy"  # top-1 over clips
    MAP = "mAP"  # mean average precision over the sigmoid scores (multi-label)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> float:
        """The metric of ``(N, C)`` logits against ``(N,)`` class indices or ``(N, C)`` multi-hot targets."""
        if self is Metric.MAP:
            return metrics.mean_average_precision(logits.sigmoid(), targets)
        return metrics.accuracy(logits, targets)

    def report(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float | int]:
        """Every score of one evaluation, this metric's own (equal to ``self(logits, targets)``) included.

        Returns:
            mAP: ``metrics.multilabel_summary`` of the sigmoid scores: ``{"mAP", "mAUC", "d_prime",
            "num_classes", "num_classes_skipped_ap"}`` (AST/SSAST report mAUC and d' beside mAP); accuracy:
            ``{"accuracy"}``.
        """
        if self is Metric.MAP:
            return metrics.multilabel_summary(logits.sigmoid(), targets)
        return {self.value: self(logits, targets)}

    def __reduce_ex__(self, protocol: object) -> tuple:
        return str, (self.value,)  # pickled (e.g. in a checkpoint's metrics) as its plain name


@dataclass(frozen=True)
class TaskSpec:
    """How one downstream task is read, trained, scored and selected.

    Attributes:
        name: registry key (``-d``).
        reader: the corpus reader (``downstream.datasets``), called with ``reader_kwargs`` (+ ``fold``).
        reader_kwargs: data root -> reader keyword arguments (fold excluded).
        metric: what evaluations score and records carry.
        loss: frozen-probe loss.
        finetune_loss: loss under ``-f`` (SSAST's KS2 recipe uses BCE).
        folds: valid ``--fold`` values, or () for tasks without folds.
        selection_split: split each run evaluates to keep its best checkpoint (``dev``; ``test`` where the
            recipe has no dev split).
        select_runs: for tasks whose recipe selects one step for all fold runs (ESC-50): the fold runs'
            folders (fold order) -> ``{"step", "mean_accuracy", "fold_accuracies", "runs"}``; None: each run
            selects on its own.
        selected_split: the split name of fold records re-scored at the step ``select_runs`` chose.
        balanced_sampling: train and dev loaders draw class-balanced (s3prl KS1 ``WeightedRandomSampler``).
        layout: one line saying what the data root must hold.
        drawn_split: the reader draws train/dev/test from ``seed`` and ``ratios`` when the layout has no
            split.
        max_train_secs: default training crop in seconds (``DataConfig.max_train_secs``); None: the reader's
            own.
        group_by_length: default of ``DataConfig.group_by_length``.
    """

    name: str
    reader: Callable[..., TaskData]
    reader_kwargs: Callable[[Path], dict]
    metric: Metric = Metric.ACCURACY
    loss: Loss = Loss.CE
    finetune_loss: Loss = Loss.CE
    folds: tuple[int, ...] = ()
    selection_split: str = "dev"
    select_runs: Callable[[Sequence[str | Path]], dict] | None = None
    selected_split: str | None = None
    balanced_sampling: bool = False
    layout: str = ""
    drawn_split: bool = False
    max_train_secs: float | None = None
    group_by_length: bool = False

    def __post_init__(self) -> None:
        # accept the names as well as the members, so a spec reads the same written either way
        object.__setattr__(self, "metric", Metric(self.metric))
        object.__setattr__(self, "loss", Loss(self.loss))
        object.__setattr__(self, "finetune_loss", Loss(self.finetune_loss))
        if (self.select_runs is None) != (self.selected_split is None):
            raise ValueError(f"task {self.name!r}: select_runs and selected_split go together")
        if self.select_runs is not None and len(self.folds) < 2:
            raise ValueError(f"task {self.name!r}: select_runs selects over fold runs; give its folds")

    def loss_for(self, finetune: bool) -> Loss:
        """The training loss of a fine-tuning (``-f``) or frozen-probe run."""
        return self.finetune_loss if finetune else self.loss

    @property
    def result_splits(self) -> tuple[str, ...]:
        """The record splits a table reads: ``test``, and the fold-averaged selection's where there is one."""
        return ("test",) if self.selected_split is None else ("test", self.selected_split)

    def check_fold(self, fold: int | None) -> int | None:
        """``fold`` checked against ``folds``; ValueError naming the task and the valid folds."""
        if not self.folds:
            if fold is not None:
                raise ValueError(f"task {self.name!r} has no folds, but --fold {fold} was given")
            return None
        if fold is None:
            raise ValueError(f"task {self.name!r} needs --fold, one of {list(self.folds)} (one fold per run)")
        if fold not in self.folds:
            raise ValueError(f"--fold {fold} is out of range for task {self.name!r}; "
                             f"valid: {list(self.folds)}")
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
            data = self.reader(**kwargs)
        except DatasetLayoutError as err:
            raise DatasetLayoutError(
                f"{err}\n(task {self.name!r} expects under the data root: {self.layout})") from None
        split_rule = data.split_rule or split_rule
        if split_rule["source"] == "layout" and (cfg.split_seed is not None or cfg.split_ratios is not None):
            log(f"{self.name}: the layout gives the train/dev/test splits; "
                "data.split_seed / data.split_ratios are not used")
        max_secs = self.max_train_secs if cfg.max_train_secs is None else cfg.max_train_secs
        grouped = self.group_by_length if cfg.group_by_length is None else cfg.group_by_length
        if self.selection_split not in data.splits:
            raise DatasetLayoutError(f"task {self.name!r} selects on the {self.selection_split} split, which "
                                     f"its reader did not give (it gave {sorted(data.splits)})")
        data = replace(data, selection_split=self.selection_split)
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
    """Add ``spec`` to ``TASKS`` (``-d NAME``); a second task of one name is an error."""
    if spec.name in TASKS:
        raise ValueError(f"task {spec.name!r} is already registered")
    if not callable(spec.reader):
        raise ValueError(f"task {spec.name!r}: reader must be a function returning TaskData, "
                         f"got {spec.reader!r}")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The registered task ``name``; ValueError listing the registered ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def _select_fold_runs(run_dirs: Sequence[str | Path]) -> dict:
    """SSAST ``get_esc_result.py`` over the fold runs of one setting (fold 1 first): one step for all folds,
    the argmax of their mean test accuracy (``metrics.fold_average_select_epoch``).

    Reads each run's ``evals.jsonl`` (one line per evaluation: ``step`` and the metric; the last line wins for
    a step evaluated twice after a resume) and uses the steps every fold evaluated.

    Returns:
        ``{"step", "mean_accuracy", "fold_accuracies", "fold_per_clip", "runs"}``: the chosen step, the fold
        mean there, the per-fold accuracies at it (in ``run_dirs`` order), each fold's per-clip correctness at
        it (``{"correct", "clip_ids_sha1"}`` of ``metrics.per_clip_correctness``, or None where the line has
        none) and the folders.
    """
    if len(run_dirs) < 2:
        raise ValueError(f"fold-averaged selection needs the fold runs (5 for ESC-50), got {len(run_dirs)}")
    key = Metric.ACCURACY.value
    curves, clips = [], []
    for d in run_dirs:
        path = Path(d) / "evals.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {d} a run_downstream.py run folder?")
        by_step, by_step_clips = {}, {}
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                if key in row:
                    by_step[int(row["step"])] = float(row[key])
                    has = "correct" in row and "clip_ids_sha1" in row
                    by_step_clips[int(row["step"])] = \
                        {k: row[k] for k in ("correct", "clip_ids_sha1")} if has else None
        curves.append(by_step)
        clips.append(by_step_clips)
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    if not steps:
        raise ValueError(f"the runs {[str(d) for d in run_dirs]} share no evaluated step")
    index, mean = metrics.fold_average_select_epoch([[c[s] for s in steps] for c in curves])
    return {"step": steps[index], "mean_accuracy": mean, "fold_accuracies": [c[steps[index]] for c in curves],
            "fold_per_clip": [c[steps[index]] for c in clips], "runs": [str(d) for d in run_dirs]}


register_task(TaskSpec("as20k", as20k, lambda r: {"root": r / "audioset"}, metric=Metric.MAP, loss=Loss.BCE,
                       finetune_loss=Loss.BCE, selection_split="test",
                       layout="audioset/{balanced_train_data_type1_2_mean,eval_data}.json"
                              " + class_labels_indices.csv"))
register_task(TaskSpec("esc50", esc50, lambda r: {"root": r / "ESC-50-master"}, folds=(1, 2, 3, 4, 5),
                       selection_split="test", select_runs=_select_fold_runs,
                       selected_split=FOLD_AVERAGED_SPLIT, layout="ESC-50-master/{audio/,meta/esc50.csv}"))
register_task(TaskSpec("speech_commands_v2", speech_commands_v2,
                       lambda r: {"root": r / "speech_commands_v0.02"}, finetune_loss=Loss.BCE,
                       layout="speech_commands_v0.02/ (word folders + *_list.txt)"))
register_task(TaskSpec("speech_commands_v1", speech_commands_v1,
                       lambda r: {"root": r / "speech_commands_v0.01",
                                  "test_root": r / "speech_commands_test_set_v0.01"},
                       balanced_sampling=True,
                       layout="speech_commands_v0.01/ and speech_commands_test_set_v0.01/"))
register_task(TaskSpec("voxceleb1", voxceleb1, lambda r: {"root": r / "VoxCeleb1"},
                       layout="VoxCeleb1/{dev/wav,test/wav,iden_split.txt}"))
register_task(TaskSpec("iemocap", iemocap, lambda r: {"root": r / "IEMOCAP_full_release"},
                       folds=(1, 2, 3, 4, 5), layout="IEMOCAP_full_release/Session1..5"))
# user data: recordings of any length, so training crops (10 s) and length-grouped batches by default
register_task(TaskSpec("folder", folder, lambda r: {"root": r}, drawn_split=True, max_train_secs=10.0,
                       group_by_length=True, layout="the data root is itself the class-folder dataset"))
register_task(TaskSpec("manifest", manifest, lambda r: {"path": r}, drawn_split=True, max_train_secs=10.0,
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
