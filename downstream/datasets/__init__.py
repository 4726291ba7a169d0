"""Downstream corpora read straight from their public on-disk layouts: one reader module per corpus.

Each reader checks the layout up front, raises ``DatasetLayoutError`` naming the missing file or the bad
value, and returns a ``TaskData``: class names, split lists of ``Clip`` records and the hints a runner needs.
Where each layout and split rule comes from (each module's docstring says more):

* ``audioset``: ``as20k``, AST/SSAST JSON datafiles + ``class_labels_indices.csv``.
* ``esc50``: ``ESC-50-master/{audio,meta/esc50.csv}``, fold k = test.
* ``speech_commands``: ``speech_commands_v2`` (SSAST's KS2) and ``speech_commands_v1`` (SUPERB's KS1).
* ``voxceleb1``: speaker identification over ``iden_split.txt``.
* ``iemocap``: 4-class emotion recognition, leave-one-session-out.
* ``folder``: generic, one sub-folder per class, optional ``train/dev/test`` level.
* ``manifest``: generic, CSV or JSONL rows ``path, label[, split]`` (``common.audio.read_manifest``).

Split names are always ``train``, ``dev`` and ``test``. Which split selects the checkpoint, the folds, the
loss and the metric are the task's, in ``downstream.tasks.TaskSpec``, which also calls ``prepare_task``
(``scanning``: header scan, label checks, training crops, length order) on every reader's output.

Shared pieces: ``clips`` (``Clip``, ``ClipDataset``, ``collate``: loading through ``upstream.frontend``),
``taskdata`` (``TaskData``, ``DataConfig``, ``AudioScan``), ``layout`` (layout checks), ``splits`` (the
seeded split draw), ``scanning`` (``prepare_task``).

The package exports each reader function under its corpus name, so ``downstream.datasets.esc50`` is the
reader; its module is imported by its full name (``from downstream.datasets.esc50 import esc50``).
"""

from .audioset import as20k
from .clips import SPLITS, Clip, ClipDataset, DatasetLayoutError, class_balanced_weights, collate, read_audio
from .esc50 import esc50
from .folder import folder
from .iemocap import IEMOCAP_CLASSES, iemocap
from .manifest import manifest
from .scanning import check_labels, crop_training, prepare_task, scan_task, sort_by_length
from .speech_commands import (
                    KS1_CLASSES,
                    KS1_KEYWORDS,
                    speech_commands_hash_percentage,
                    speech_commands_v1,
                    speech_commands_v2,
)
from .taskdata import AudioScan, DataConfig, TaskData
from .voxceleb1 import voxceleb1

__all__ = [
    "DatasetLayoutError",
    "Clip",
    "DataConfig",
    "AudioScan",
    "TaskData",
    "prepare_task",
    "scan_task",
    "check_labels",
    "crop_training",
    "sort_by_length",
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
    "SPLITS",
    "KS1_CLASSES",
    "KS1_KEYWORDS",
    "IEMOCAP_CLASSES",
]
