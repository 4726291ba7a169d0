"""Per-clip predictions of an evaluation, for error analysis: ``<run folder>/predictions.<split>.jsonl``.

One JSON object per evaluated clip, in evaluation order::

    {"path": "dog/1-100032-A-0.wav", "uid": "1-100032-A-0", "label": "dog", "pred": "dog",
     "topk": [["dog", 0.91], ["rooster", 0.03], ...]}

* ``path``: the audio file relative to the data root (``--data-root`` / ``$ASTBENCH_DATA``; a manifest's
  folder), or ``<split>:<uid>`` for a file outside it, so the file names no machine path.
* ``label`` / ``pred``: class names; for a multi-label task (AS-20K) lists: the labels, and the classes scored
  >= 0.5.
* ``topk``: the ``k`` best classes with their scores: softmax probabilities for a model trained with
  cross-entropy, sigmoid scores for one trained with BCE (AS-20K, SSAST's KS2 fine-tuning).

Each run folder holds one task, one fold and one mode, so the ESC-50 and IEMOCAP folds' files never mix. A
split drawn with replacement (KS1's class-balanced dev draw) lists a clip once per draw. The file is
replaced atomically, so a reader never sees half of it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from common.files import write_atomic

from .datasets import Clip, TaskData
from .tasks import Loss, resolve_data_root

__all__ = ["prediction_rows", "write_predictions", "data_base"]


def data_base(data_root: str | os.PathLike | None) -> Path | None:
    """The folder clip paths are written relative to: the data root, or a manifest file's folder; None when
    no data root can be found (paths then fall back to ``<split>:<uid>``)."""
    try:
        root = resolve_data_root(data_root).resolve()
    except ValueError:
        return None
    return root if root.is_dir() else root.parent


def _relative(clip: Clip, base: Path | None) -> str:
    if base is not None:
        try:
            return clip.path.resolve().relative_to(base).as_posix()
        except ValueError:
            pass
    return f"{clip.split}:{clip.uid}"


def prediction_rows(logits: torch.Tensor, targets: torch.Tensor, uids: list[str], data: TaskData, split: str,
                    loss: Loss, base: Path | None, k: int = 5) -> list[dict]:
    """The records of one evaluation (see the module docstring).

    Args:
        logits: (N, C) model outputs, in evaluation order.
        targets: (N,) class indices, or (N, C) multi-hot for a multi-label task.
        uids: the N clip ids the loader gave (``Clip.uid``), mapped back to their files in
            ``data.splits[split]``.
        loss: the loss the model trained with (``TaskSpec.loss_for``): its ``probabilities`` are the scores
            (softmax for CE, per-class sigmoid for BCE).
        base: folder the paths are made relative to (:func:`data_base`).
        k: classes listed in ``topk`` (at most C).
    """
    if logits.ndim != 2 or len(logits) != len(uids) or len(targets) != len(uids):
        raise ValueError(f"predictions: {len(uids)} clip ids for logits {tuple(logits.shape)} and targets "
                         f"{tuple(targets.shape)}")
    clips: dict[str, Clip] = {}
    for clip in data.splits[split]:
        clips.setdefault(clip.uid, clip)
    names = data.classes
    scores = loss.probabilities(logits)
    top_scores, top_index = scores.topk(min(k, scores.shape[1]), dim=-1)
    rows = []
    for i, uid in enumerate(uids):
        clip = clips.get(uid)
        if data.multilabel:
            label: str | list[str] = [names[j] for j in targets[i].nonzero().flatten().tolist()]
            pred: str | list[str] = [names[j] for j in (scores[i] >= 0.5).nonzero().flatten().tolist()]
        else:
            label, pred = names[int(targets[i])], names[int(scores[i].argmax())]
        rows.append({"path": _relative(clip, base) if clip is not None else f"{split}:{uid}", "uid": uid,
                     "label": label, "pred": pred,
                     "topk": [[names[j], round(float(s), 6)] for s, j in zip(top_scores[i].tolist(),
                                                                           top_index[i].tolist())]})
    return rows


def write_predictions(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Write ``rows`` as JSON lines to ``path`` atomically (temp file + rename); returns the path."""
    path = Path(path)
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path
