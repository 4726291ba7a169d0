"""k-NN probe of frozen clip features, to watch representations learn during pretraining.

DINO monitors its runs this way (facebookresearch/dino ``eval_knn.py``, ``knn_classifier``): L2-normalised
features, cosine similarity of every test clip to every train clip, the ``k`` nearest train clips vote for
their class with weight ``exp(similarity / T)``, and the class with the largest vote wins. No training, so a
probe costs one forward pass over a few hundred clips and can run every few hundred pretraining steps.

``run_pretrain.py --probe TASK --probe-data-root DIR`` builds a :class:`KnnProbe` and hands it to
``pretrain.engine.pretrain`` as its ``probe`` callback: the upstream package never imports this one.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .datasets import DataConfig, TaskData
from .metrics import class_baselines
from .tasks import get_task

__all__ = ["knn_predict", "knn_accuracy", "clip_features", "KnnProbe"]

log = logging.getLogger(__name__)


def knn_predict(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, num_classes: int, k: int = 20,
                temperature: float = 0.07, chunk: int = 256) -> Tensor:
    """DINO's weighted k-NN vote.

    Args:
        train_feats: ``(M, D)`` features of the labelled clips.
        train_labels: ``(M,)`` their class indices.
        test_feats: ``(N, D)`` features to classify.
        num_classes: C.
        k: neighbours that vote (at most M are used).
        temperature: T of the ``exp(cos / T)`` vote weights (DINO: 0.07).
        chunk: test clips compared at a time (bounds the ``(chunk, M)`` similarity matrix).

    Returns:
        ``(N,)`` int64 predicted classes.
    """
    if train_feats.ndim != 2 or test_feats.ndim != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"knn_predict expects (M, D) and (N, D) features, got {tuple(train_feats.shape)} "
                         f"and {tuple(test_feats.shape)}")
    if len(train_labels) != len(train_feats) or len(train_feats) == 0:
        raise ValueError(f"knn_predict: {len(train_labels)} labels for {len(train_feats)} train features")
    if k < 1 or not temperature > 0:
        raise ValueError(f"knn_predict: k must be >= 1 and temperature > 0, got k={k}, "
                         f"temperature={temperature}")
    train = F.normalize(train_feats.float(), dim=1)
    labels = train_labels.long().to(train.device)
    k = min(k, len(train))
    preds = []
    for start in range(0, len(test_feats), chunk):
        sim = F.normalize(test_feats[start:start + chunk].float(), dim=1) @ train.T  # (n, M) cosine
        top_sim, top_idx = sim.topk(k, dim=1)  # (n, k)
        votes = torch.zeros(len(sim), num_classes, device=sim.device)
        votes.scatter_add_(1, labels[top_idx], (top_sim / temperature).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def knn_accuracy(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
                 num_classes: int, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy of :func:`knn_predict` on ``(test_feats, test_labels)``, in [0, 1]."""
    pred = knn_predict(train_feats, train_labels, test_feats, num_classes, k, temperature)
    return float((pred.cpu() == test_labels.long().cpu()).double().mean())


@torch.no_grad()
def clip_features(upstream: nn.Module, wavs: Sequence[Tensor], batch_size: int = 16,
                  device: torch.device | str = "cpu") -> Tensor:
    """``(N, D)`` float32 clip features (``upstream(wavs)["clip"]``) of N waveforms, in eval mode, on CPU."""
    was_training = upstream.training
    upstream.eval()
    try:
        out = [upstream([w.to(device) for w in wavs[i:i + batch_size]])["clip"].float().cpu()
               for i in range(0, len(wavs), batch_size)]
    finally:
        upstream.train(was_training)
    return torch.cat(out)


def _capped(n: int, cap: int, seed: int) -> list[int]:
    """``min(n, cap)`` indices out of ``n``: a seeded draw, sorted, the same at every probe of a run."""
    if n <= cap:
        return list(range(n))
    return sorted(np.random.default_rng(seed).permutation(n)[:cap].tolist())


class KnnProbe:
    """A labelled task's train and test clips, read once, scored by k-NN on an encoder's clip features.

    Call it with a pretraining objective (anything with ``to_upstream()`` and ``frontend.sample_rate``) and
    the step; it returns the record that goes to ``losses.jsonl``.

    Args:
        task: a registered task name (``run_downstream.py -d``); a single-label one. A task with folds uses
            its first fold.
        data_root: the task's data folder (None: ``$ASTBENCH_DATA``).
        max_clips: at most this many clips of each split (a seeded draw): the probe must stay cheap.
        k, temperature: the vote (DINO: 20 and 0.07).
        batch_size: clips per forward pass.
        device: where the features are computed (default: the objective's device).
        log: where reading the data reports (resampling, skipped files).

    Raises:
        ValueError: an unknown task, or a multi-label task (k-NN voting needs one class per clip);
        DatasetLayoutError (a ValueError): the data is not the task's layout.
    """

    def __init__(self, task: str, data_root: str | None = None, max_clips: int = 512, k: int = 20,
                 temperature: float = 0.07, batch_size: int = 16, device: torch.device | str | None = None,
                 seed: int = 0, log: Callable[[str], None] = log.info):
        if max_clips < 1 or k < 1 or not temperature > 0:
            raise ValueError(f"k-NN probe: max_clips and k must be >= 1 and temperature > 0, got "
                             f"{max_clips}, {k}, {temperature}")
        spec = get_task(task)
        self.task, self.k, self.temperature = task, k, temperature
        self.batch_size, self.device = batch_size, device
        self.fold = spec.folds[0] if spec.folds else None
        data: TaskData = spec.read(data_root, self.fold, DataConfig(), log=log)
        if data.multilabel:
            raise ValueError(f"--probe {task}: a multi-label task cannot be probed by a k-NN vote; give a "
                             "single-label task (e.g. folder, manifest, speech_commands_v1)")
        self.data = data
        self.test_split = "test" if "test" in data.splits else data.selection_split
        self.index = {split: _capped(len(data.splits[split]), max_clips, seed + i)
                      for i, split in enumerate(("train", self.test_split))}
        for split, idx in self.index.items():
            if not idx:
                raise ValueError(f"--probe {task}: the {split} split has no clips")
        self._wavs: dict[tuple[str, int], list[Tensor]] = {}  # (split, sample rate) -> waveforms
        self.labels = {split: torch.tensor([int(data.splits[split][i].label) for i in idx])
                       for split, idx in self.index.items()}
        base = class_baselines(self.labels["train"], self.labels[self.test_split], data.num_classes)
        self.majority, self.chance = base["majority"], base["chance"]

    def _audio(self, split: str, sample_rate: int) -> list[Tensor]:
        if (split, sample_rate) not in self._wavs:
            ds = self.data.dataset(split, sample_rate, train=False)
            self._wavs[(split, sample_rate)] = [ds[i][0] for i in self.index[split]]
        return self._wavs[(split, sample_rate)]

    def __call__(self, objective: nn.Module, step: int) -> dict:
        """k-NN accuracy of ``objective``'s encoder now; leaves the objective and every RNG as they were."""
        device = self.device or next(objective.parameters()).device
        sr = int(objective.frontend.sample_rate)
        # building the upstream draws initial weights: keep the stream
        with torch.random.fork_rng(devices=[]):
            upstream = objective.to_upstream().to(device)
        feats = {split: clip_features(upstream, self._audio(split, sr), self.batch_size, device)
                 for split in self.index}
        if not all(torch.isfinite(f).all() for f in feats.values()):
            acc = math.nan  # a diverged encoder; the loss check reports it
        else:
            acc = knn_accuracy(feats["train"], self.labels["train"], feats[self.test_split],
                               self.labels[self.test_split], self.data.num_classes, self.k, self.temperature)
        return {"task": self.task, "split": self.test_split, "knn_accuracy": acc, "k": self.k,
                "train_clips": len(self.index["train"]), "test_clips": len(self.index[self.test_split]),
                "majority": self.majority, "chance": self.chance}
