"""k-NN probe of frozen features, to watch representations learn during pretraining.

DINO monitors its runs this way (facebookresearch/dino ``eval_knn.py``, ``knn_classifier``): L2-normalised
features, cosine similarity of every test clip to every train clip, the ``k`` nearest train clips vote for
their class with weight ``exp(similarity / T)``, and the class with the largest vote wins. No training, so a
probe costs one forward pass over the task's clips and can run every few hundred pretraining steps.

What :class:`KnnProbe` scores is chosen so that its curve predicts the downstream table:

* **the model the downstream loads**: the encoder is saved and loaded back through ``upstream.load`` under a
  registered name of its family (as the downstream loads ``upstream.pt``), so SSAST is probed at its
  downstream stride and window, not at its pretraining grid;
* **the feature the downstream head sees**: the time-mean of ``last_hidden_state`` over each clip's own
  frames (``lengths``); the s3prl utterance head is linear -> mean over time -> linear, so a linear model of
  this mean. The upstream's ``clip`` vector is scored too, as a second metric (``clip_knn_accuracy``);
* **enough clips**: every labelled clip is scored against the clips of the *other* groups (leave one group
  out: speakers for Speech Commands, folds for ESC-50 and IEMOCAP), so no neighbour shares the speaker or the
  recording; a task without groups falls back to train -> test. The record gives the number of clips and the
  95 % interval half-width (normal approximation, ``1.96 sqrt(p (1 - p) / n)``).

``run_pretrain.py --probe TASK [TASK ...] --probe-data-root DIR`` builds one :class:`KnnProbe` per task and
hands them to ``pretrain.engine.run`` as its ``probe`` callback: the pretraining package never imports
this one.
"""
from __future__ import annotations

import copy
import logging
import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from upstream.interface import run_upstream

from .datasets import DataConfig
from .datasets.clips import Clip, ClipDataset
from .metrics import class_baselines
from .tasks import get_task

__all__ = ["knn_predict", "knn_accuracy", "knn_leave_group_out", "clip_group", "ci95", "mean_features",
           "clip_features", "probe_upstream", "KnnProbe", "ProbeSet"]

log = logging.getLogger(__name__)


def _vote(sim: Tensor, labels: Tensor, num_classes: int, k: int, temperature: float) -> Tensor:
    """Weighted vote of the ``k`` most similar columns of ``sim`` (n, M): ``(n,)`` predicted classes.
    Columns at ``-inf`` (excluded neighbours) never vote: their weight ``exp(-inf)`` is 0."""
    top_sim, top_idx = sim.topk(k, dim=1)  # (n, k)
    votes = torch.zeros(len(sim), num_classes, device=sim.device)
    votes.scatter_add_(1, labels[top_idx], (top_sim / temperature).exp())
    return votes.argmax(dim=1)


def _check_vote(k: int, temperature: float) -> None:
    if k < 1 or not temperature > 0:
        raise ValueError(f"k-NN: k must be >= 1 and temperature > 0, got k={k}, temperature={temperature}")


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
    _check_vote(k, temperature)
    train = F.normalize(train_feats.float(), dim=1)
    labels = train_labels.long().to(train.device)
    k = min(k, len(train))
    preds = [_vote(F.normalize(test_feats[s:s + chunk].float(), dim=1) @ train.T, labels, num_classes, k,
                   temperature) for s in range(0, len(test_feats), chunk)]
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def knn_accuracy(train_feats: Tensor, train_labels: Tensor, test_feats: Tensor, test_labels: Tensor,
                 num_classes: int, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy of :func:`knn_predict` on ``(test_feats, test_labels)``, in [0, 1]."""
    pred = knn_predict(train_feats, train_labels, test_feats, num_classes, k, temperature)
    return float((pred.cpu() == test_labels.long().cpu()).double().mean())


def knn_leave_group_out(feats: Tensor, labels: Tensor, groups: Tensor, num_classes: int, k: int = 20,
                        temperature: float = 0.07, chunk: int = 256) -> Tensor:
    """Every clip classified by the k-NN vote of the clips of *other* groups (itself and its own group never
    vote): ``(N,)`` predicted classes.

    Args:
        feats: ``(N, D)`` features; labels: ``(N,)`` classes; groups: ``(N,)`` group ids (speaker, fold).
        k: neighbours that vote, at most the smallest number of clips outside one group.
    """
    if feats.ndim != 2 or len(labels) != len(feats) or len(groups) != len(feats):
        raise ValueError(f"knn_leave_group_out: features {tuple(feats.shape)}, {len(labels)} labels and "
                         f"{len(groups)} groups do not match")
    _check_vote(k, temperature)
    _, counts = torch.unique(groups, return_counts=True)
    others = len(feats) - int(counts.max())
    if others < 1:
        raise ValueError("knn_leave_group_out needs clips of at least two groups")
    x = F.normalize(feats.float(), dim=1)
    labels, groups = labels.long(), groups.long()
    k = min(k, others)
    preds = []
    for s in range(0, len(x), chunk):
        sim = x[s:s + chunk] @ x.T  # (n, N) cosine
        sim.masked_fill_(groups[s:s + chunk, None] == groups[None, :], -math.inf)
        preds.append(_vote(sim, labels, num_classes, k, temperature))
    return torch.cat(preds)


def ci95(accuracy: float, n: int) -> float:
    """Half-width of the normal-approximation 95 % interval of an accuracy measured on ``n`` clips."""
    if n <= 0 or not math.isfinite(accuracy):
        return math.nan
    return 1.959964 * math.sqrt(accuracy * (1 - accuracy) / n)


def clip_group(clip: Clip) -> str | None:
    """The group a clip must not take neighbours from: its fold (ESC-50, IEMOCAP), its speaker (a Speech
    Commands name ``<speaker>_nohash_<take>.wav``), or None (no group known)."""
    if clip.fold is not None:
        return f"fold{clip.fold}"
    name = Path(clip.path).name
    if "_nohash_" in name:
        return name.split("_nohash_")[0]
    return None


def mean_features(out: dict) -> Tensor:
    """``(B, H)``: the mean of ``last_hidden_state`` (B, T, H) over each clip's first ``lengths`` frames."""
    hidden, lengths = out["last_hidden_state"].float(), out["lengths"].to(out["last_hidden_state"].device)
    valid = (torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]).float()
    return (hidden * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp(min=1.0)


@torch.no_grad()
def clip_features(upstream: nn.Module, wavs: Sequence[Tensor], batch_size: int = 16,
                  device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Features of N waveforms in eval mode, on CPU: ``{"mean": (N, H)`` time-mean of ``last_hidden_state``
    (:func:`mean_features`), ``"clip": (N, D)`` the upstream's clip vector``}``.

    Clips are batched in order of length, so a batch pads little; the rows come back in the input order."""
    was_training = upstream.training
    upstream.eval()
    order = sorted(range(len(wavs)), key=lambda i: len(wavs[i]))
    means, clips = [], []
    try:
        for s in range(0, len(order), batch_size):
            # no hidden-state list: the probe reads only last_hidden_state and clip
            out = run_upstream(upstream, [wavs[i].to(device) for i in order[s:s + batch_size]], [])
            means.append(mean_features(out).cpu())
            clips.append(out["clip"].float().cpu())
    finally:
        upstream.train(was_training)
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return {"mean": torch.cat(means)[back], "clip": torch.cat(clips)[back]}


def _registered_name(objective: nn.Module) -> str | None:
    """A registered upstream that loads ``objective``'s checkpoints as the downstream does (the family's
    upstream prefix, e.g. ``ssast_patch``; its test-size name when there is one), or None when the objective
    does not say (no family config)."""
    from upstream.registry import get_family

    try:
        family = get_family(objective.family)
        prefix = family.upstream_prefix(objective.cfg)
    except (AttributeError, KeyError, ValueError):
        return None
    names = [n for n in family.upstreams() if n.startswith(prefix)]
    return next((n for n in names if n.endswith("_mini")), names[0] if names else None)


def probe_upstream(objective: nn.Module, name: str | None = None) -> nn.Module:
    """The upstream a downstream run would build from ``objective``'s encoder now: its ``upstream.pt``
    (``save_upstream``) loaded with ``upstream.load(name)``; ``name`` defaults to :func:`_registered_name`.
    Without a name (an objective outside the registry) the objective's own ``to_upstream()``."""
    import upstream as upstream_lib
    from upstream.checkpoint import save_upstream

    own = objective.to_upstream()
    name = name or _registered_name(objective)
    if name is None:
        return own
    with tempfile.TemporaryDirectory(prefix="knn-probe-") as tmp:
        path = Path(tmp) / "upstream.pt"
        save_upstream(own, path)
        return upstream_lib.load(name, ckpt=path)


def _capped(n: int, cap: int, seed: int) -> list[int]:
    """``min(n, cap)`` indices out of ``n``: a seeded draw, sorted, the same at every probe of a run."""
    if n <= cap:
        return list(range(n))
    return sorted(np.random.default_rng(seed).permutation(n)[:cap].tolist())


class KnnProbe:
    """A labelled task's clips, read once, scored by k-NN on an encoder's features at each call.

    Call it with a pretraining objective (anything with ``to_upstream()`` and ``frontend.sample_rate``) and
    the step; it returns the record that goes to ``losses.jsonl``: ``knn_accuracy`` (time-mean feature),
    ``clip_knn_accuracy``, ``n_clips``, ``ci95`` (the half-width, a fraction), ``protocol``, ``k``, and the
    ``majority`` / ``chance`` baselines.

    Args:
        task: a registered single-label task (``run_downstream.py -d``). Leave-one-group-out over the clips
            of every split when each clip has a group (:func:`clip_group`); else train -> test (or the
            selection split) of its first fold.
        data_root: the task's data folder (None: ``$ASTBENCH_DATA``).
        max_clips: at most this many clips in all (a seeded draw), to bound the probe's cost.
        k, temperature: the vote (DINO: 20 and 0.07).
        batch_size: clips per forward pass.
        device: where the features are computed (default: the objective's device).
        upstream: the registered upstream name to load the encoder as (default: the family's, see
            :func:`probe_upstream`).
        log: where reading the data reports (resampling, skipped files).

    Raises:
        ValueError: an unknown task, or a multi-label task (k-NN voting needs one class per clip);
        DatasetLayoutError (a ValueError): the data is not the task's layout.
    """

    def __init__(self, task: str, data_root: str | None = None, max_clips: int = 4000, k: int = 20,
                 temperature: float = 0.07, batch_size: int = 32, device: torch.device | str | None = None,
                 seed: int = 0, upstream: str | None = None, log: Callable[[str], None] = log.info):
        if max_clips < 2 or k < 1 or not temperature > 0:
            raise ValueError(f"k-NN probe: max_clips must be >= 2, k >= 1 and temperature > 0, got "
                             f"{max_clips}, {k}, {temperature}")
        spec = get_task(task)
        self.task, self.k, self.temperature = task, k, temperature
        self.batch_size, self.device, self.upstream = batch_size, device, upstream
        data = spec.read(data_root, spec.folds[0] if spec.folds else None, DataConfig(), log=log)
        if data.multilabel:
            raise ValueError(f"--probe {task}: a multi-label task cannot be probed by a k-NN vote; give a "
                             "single-label task (e.g. folder, manifest, speech_commands_v1)")
        self.classes, self.num_classes = data.classes, len(data.classes)
        every = [c for split in sorted(data.splits) for c in data.splits[split]]
        groups = [clip_group(c) for c in every]
        if every and all(g is not None for g in groups) and len(set(groups)) > 1:
            self.protocol = "leave one fold out" if every[0].fold is not None else "leave one speaker out"
            keep = _capped(len(every), max_clips, seed)
            self.clips = [every[i] for i in keep]
            ids = {g: i for i, g in enumerate(sorted(set(groups)))}
            self.groups: Tensor | None = torch.tensor([ids[groups[i]] for i in keep])
            self.train_idx = self.test_idx = None
        else:  # no groups: the layout's own train -> test
            test_split = "test" if "test" in data.splits else data.selection_split
            self.protocol = f"train -> {test_split}"
            n_train = len(data.splits["train"])
            train = [data.splits["train"][i] for i in _capped(n_train, max_clips // 2, seed)]
            test = [data.splits[test_split][i]
                    for i in _capped(len(data.splits[test_split]), max_clips - len(train), seed + 1)]
            if not train or not test:
                raise ValueError(f"--probe {task}: the train or the {test_split} split has no clips")
            self.clips, self.groups = train + test, None
            self.train_idx = torch.arange(len(train))
            self.test_idx = torch.arange(len(train), len(train) + len(test))
        self.labels = torch.tensor([int(c.label) for c in self.clips])
        scored = self.labels if self.test_idx is None else self.labels[self.test_idx]
        reference = self.labels if self.train_idx is None else self.labels[self.train_idx]
        base = class_baselines(reference, scored, self.num_classes)
        self.majority, self.chance = base["majority"], base["chance"]
        self._wavs: dict[int, list[Tensor]] = {}  # sample rate -> waveforms, read once

    def for_upstream(self, name: str | None) -> KnnProbe:
        """The same probe (the same clips, their audio read once for both) loading the encoder as ``name``."""
        other = copy.copy(self)  # shallow: the waveform cache is shared
        other.upstream = name
        return other

    @property
    def n_clips(self) -> int:
        """The clips scored (the denominator of the accuracy)."""
        return len(self.labels) if self.test_idx is None else len(self.test_idx)

    def _audio(self, sample_rate: int) -> list[Tensor]:
        if sample_rate not in self._wavs:
            ds = ClipDataset(self.clips, sample_rate, self.classes, train=False)
            self._wavs[sample_rate] = [ds[i][0] for i in range(len(ds))]
        return self._wavs[sample_rate]

    def score(self, feats: Tensor) -> float:
        """k-NN accuracy of ``(N, D)`` features of :attr:`clips` under the probe's protocol (NaN when a
        feature is not finite: a diverged encoder, which the loss check reports)."""
        if not torch.isfinite(feats).all():
            return math.nan
        if self.groups is not None:
            pred = knn_leave_group_out(feats, self.labels, self.groups, self.num_classes, self.k,
                                       self.temperature)
            return float((pred == self.labels).double().mean())
        return knn_accuracy(feats[self.train_idx], self.labels[self.train_idx], feats[self.test_idx],
                            self.labels[self.test_idx], self.num_classes, self.k, self.temperature)

    def __call__(self, objective: nn.Module, step: int) -> dict:
        """The probe's record for ``objective``'s encoder now; leaves the objective and every RNG as they
        were."""
        device = self.device or next(objective.parameters()).device
        sr = int(objective.frontend.sample_rate)
        with torch.random.fork_rng(devices=[]):  # building an upstream draws initial weights: keep the stream
            upstream = probe_upstream(objective, self.upstream).to(device)
        feats = clip_features(upstream, self._audio(sr), self.batch_size, device)
        acc = self.score(feats["mean"])
        return {"task": self.task, "protocol": self.protocol, "feature": "time-mean last_hidden_state",
                "knn_accuracy": acc, "n_clips": self.n_clips, "ci95": ci95(acc, self.n_clips),
                "clip_knn_accuracy": self.score(feats["clip"]), "k": self.k, "majority": self.majority,
                "chance": self.chance}


class ProbeSet:
    """Several probes as one ``probe(objective, step)`` callback: a list of their records, one
    ``losses.jsonl`` line each."""

    def __init__(self, probes: Sequence[Callable[[nn.Module, int], dict]]):
        self.probes = list(probes)

    def __call__(self, objective: nn.Module, step: int) -> list[dict]:
        return [probe(objective, step) for probe in self.probes]
