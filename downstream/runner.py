"""Train and evaluate a downstream head on any upstream, s3prl-style, frozen (default) or fine-tuned (``-f``).

One upstream API serves both modes: ``upstream(wavs)`` gives hidden states, lengths and the clip feature.
Frozen: upstream ``.eval()`` under ``torch.no_grad()``, only Featurizer + head learn. Fine-tune: upstream
``.train()`` and its parameters join the head's in one Adam at the same lr (s3prl ``_get_optimizer``).
Model selection: evaluate ``TaskData.selection_split`` every ``eval_step`` steps, keep ``dev-best.ckpt``.
Frozen runs read upstream features from ``downstream.cache``; ``-f`` PSLA runs add ``downstream.augment``;
training batches come from ``common.distributed.StepBatchSampler`` (exact resume, ``torchrun`` ranks).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, WeightedRandomSampler

from common.config import temp_path, truncate_jsonl
from pretrain.engine import fused_adam_supported
from upstream.safe_load import load_checkpoint_file

from . import metrics
from .augment import AugmentConfig, ScheduleConfig, WeightAverage, attach_to_frontend, lr_factor, mixup
from .cache import CachedDataset, FeatureBatch, FeatureCache, collate_features, select_features
from .batching import LengthGroupedSampler, length_batches
from .datasets import DataConfig, TaskData, class_balanced_weights, collate
from common.distributed import DistContext, StepBatchSampler
from .featurizer import Featurizer
from .heads import PSLAHead, UtteranceHead
from .progress import printer, progress
from .tasks import TaskSpec


# ------------------------------------------------------------------------------------------ config
@dataclass
class RunnerConfig:
    total_steps: int = 200_000  # optimizer steps (s3prl runner.total_steps)
    eval_step: int = 5000  # evaluate the selection split every this many steps
    log_step: int = 100  # train loss, lr and gradient norm (before clipping) to the log and tensorboard
    batch_size: int = 32
    eval_batch_size: int = 32
    gradient_accumulate_steps: int = 1  # micro-batches per optimizer step
    gradient_clipping: float = 1.0  # s3prl default
    num_workers: int = 0
    feature_cache: bool = True  # frozen runs: upstream features computed once, read from disk (downstream.cache)

    def __post_init__(self):
        _at_least(self, 1, "total_steps", "eval_step", "log_step", "batch_size", "eval_batch_size",
                  "gradient_accumulate_steps")
        _at_least(self, 0, "num_workers")
        if not self.gradient_clipping > 0:  # also refuses NaN
            raise ValueError(f"gradient_clipping must be > 0 (s3prl: 1.0), got {self.gradient_clipping}")


@dataclass
class OptimizerConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)  # SSAST PSLA recipe: (0.95, 0.999)
    weight_decay: float = 0.0  # SSAST PSLA recipe: 5e-7

    def __post_init__(self):
        if not self.lr > 0:  # also refuses NaN
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must each lie in [0, 1), got {list(self.betas)}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclass
class HeadConfig:
    kind: Literal["utterance", "psla"] = "utterance"  # s3prl UtteranceLevel | SSAST ft_avgtok mlp_head
    feature: Literal["hidden_states", "last_hidden_state"] = "hidden_states"  # s3prl -s
    proj_dim: int = 256

    def __post_init__(self):
        _at_least(self, 1, "proj_dim")


def _at_least(cfg, low: int, *names: str) -> None:
    """ValueError naming the first field of ``cfg`` below ``low`` (the config loader adds its section)."""
    for name in names:
        if getattr(cfg, name) < low:
            raise ValueError(f"{name} must be >= {low}, got {getattr(cfg, name)}")


@dataclass
class RunConfig:
    """What this run is; saved so ``-m evaluate -e EXPDIR`` rebuilds it."""

    upstream: str = ""
    ckpt: str | None = None
    task: str = ""
    fold: int | None = None
    finetune: bool = False
    layer: int | None = None
    seed: int = 1337  # s3prl default
    data_root: str | None = None
    expname: str = ""
    label: str = ""  # table row (benchmark suites); empty = the upstream name

    def __post_init__(self):
        if not 0 <= self.seed < 2**32:  # what numpy's global seed takes
            raise ValueError(f"seed must lie in 0..2**32-1, got {self.seed}")


@dataclass
class DownstreamConfig:
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # -f PSLA recipes only
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    upstream_overrides: dict = field(default_factory=dict)  # passed to upstream.load (e.g. window_secs)
    # overrides for one family only, keyed by its name prefix: {"ssast": {"target_length": 512}} applies to
    # ssast_* upstreams (a recipe's input length is SSAST's setting; MAE-AST and ASiT take whole clips)
    family_overrides: dict = field(default_factory=dict)
    # which family protocol (downstream.protocols) sits between the task config and -c/-o: 'official' (the
    # family's own pipeline), 's3prl' (its recipe on the upstream as s3prl's expert builds it) or 'none'
    protocol: str = "official"
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)  # bad files, training crops, batching, folder splits

    def __post_init__(self):
        if self.protocol not in ("official", "s3prl", "none"):
            raise ValueError(f"protocol must be 'official', 's3prl' or 'none', got {self.protocol!r}")

    def overrides_for(self, upstream: str) -> dict:
        """``upstream.load`` overrides of ``upstream``: its family's, then ``upstream_overrides`` on top."""
        merged: dict = {}
        for family, overrides in self.family_overrides.items():
            if not isinstance(overrides, dict):
                raise ValueError(f"family_overrides.{family} must be a mapping of upstream overrides, "
                                 f"got {overrides!r}")
            if upstream.startswith(f"{family}_"):
                merged.update(overrides)
        return {**merged, **self.upstream_overrides}


# ------------------------------------------------------------------------------------------ model
class DownstreamModel(nn.Module):
    """upstream -> Featurizer -> UtteranceHead, or upstream clip feature -> PSLAHead. Returns logits.

    Takes a list of waveforms, or a :class:`~downstream.cache.FeatureBatch` of cached frozen features.
    """

    def __init__(self, upstream: nn.Module, num_classes: int, head: HeadConfig, layer: int | None = None,
                 finetune: bool = False):
        super().__init__()
        self.upstream, self.finetune, self.kind = upstream, finetune, head.kind
        self.upstream.requires_grad_(finetune)
        self.featurizer = None
        if head.kind == "psla":
            self.head = PSLAHead(upstream.clip_size, num_classes)
        else:
            if head.feature == "hidden_states" or layer is not None:  # -l k picks hidden_states[k]
                self.featurizer = Featurizer(upstream.num_layers, layer)
            self.head = UtteranceHead(upstream.hidden_size, num_classes, head.proj_dim)

    @property
    def selection(self) -> str:
        """The upstream output the head reads (the feature cache stores it)."""
        return "clip" if self.kind == "psla" else "hidden_states" if self.featurizer else "last_hidden_state"

    def augment_inputs(self, cfg: AugmentConfig, generator: torch.Generator) -> None:
        """Put SpecAugment/noise after the upstream's front end (training mode only, ``-f`` only)."""
        if not self.finetune:
            raise ValueError("augment.* applies to -f runs only: a frozen probe (and its feature cache) sees "
                             "the clips unaugmented, as s3prl's")
        attach_to_frontend(self.upstream, cfg, generator)  # an upstream without .frontend: skipped, warned

    def train(self, mode: bool = True) -> "DownstreamModel":
        super().train(mode)
        if not self.finetune:
            self.upstream.eval()  # frozen probe: no dropout, no norm-statistic updates
        return self

    def forward(self, inputs: list[torch.Tensor] | FeatureBatch) -> torch.Tensor:
        if isinstance(inputs, FeatureBatch):
            feats, lengths = self._cached(inputs)  # (B, T, L, H), (B,)
            if self.kind == "psla":
                return self.head(feats[:, 0, 0])
            hidden = list(feats.unbind(2))
            return self.head(self.featurizer(hidden) if self.featurizer is not None else hidden[0], lengths)
        with torch.set_grad_enabled(self.finetune and self.training and torch.is_grad_enabled()):
            out = self.upstream(inputs)
        if self.kind == "psla":
            return self.head(out["clip"])
        feats = self.featurizer(out["hidden_states"]) if self.featurizer is not None else out["last_hidden_state"]
        return self.head(feats, out["lengths"])

    def _cached(self, batch: FeatureBatch) -> tuple[torch.Tensor, torch.Tensor]:
        feats, lengths = batch.feats.float(), batch.lengths.clone()
        if batch.live:  # random training crops: through the frozen upstream now
            rows = torch.tensor([i for i, _ in batch.live], device=feats.device)
            with torch.no_grad():
                live, live_lens = select_features(self.upstream([w for _, w in batch.live]), self.selection)
            if feats.shape[2:] != live.shape[2:]:  # the batch had no cached clip to give the shape
                feats = feats.new_zeros(*feats.shape[:2], *live.shape[2:])
            T = max(feats.shape[1], live.shape[1])
            feats = F.pad(feats, (0, 0, 0, 0, 0, T - feats.shape[1]))
            feats[rows] = F.pad(live.float(), (0, 0, 0, 0, 0, T - live.shape[1]))
            lengths[rows] = live_lens.to(lengths.dtype)
        return feats, lengths

    def trainable_state(self) -> dict:
        """Weights the run learned: head + featurizer, plus the upstream when fine-tuned."""
        return {k: v for k, v in self.state_dict().items() if self.finetune or not k.startswith("upstream.")}


def compute_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """``'ce'`` on class indices (or the argmax of mixed targets, as SSAST), or ``'bce'`` on multi-hot /
    one-hot / mixed targets (SSAST KS2 recipe)."""
    logits = logits.float()
    if kind == "bce":
        target = labels.float() if labels.ndim == 2 else F.one_hot(labels, logits.shape[-1]).float()
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.cross_entropy(logits, labels.argmax(-1) if labels.ndim == 2 else labels)


def build_optimizer(model: DownstreamModel, cfg: OptimizerConfig, device: torch.device) -> torch.optim.Adam:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                            fused=fused_adam_supported(device))  # one kernel per update, CPU included


def _dataset(data: TaskData, split: str, sample_rate: int, train: bool, seed: int, cache: FeatureCache | None):
    data.note_resampling(sample_rate)  # once per dataset: which native rates become the upstream's
    if cache is not None:
        return cache.dataset(data, split, sample_rate, train=train, seed=seed)
    return data.dataset(split, sample_rate, train=train, seed=seed)


def _collate(ds) -> Callable:
    return collate_features if isinstance(ds, CachedDataset) else collate


def build_loader(data: TaskData, spec: TaskSpec, split: str, sample_rate: int, cfg: RunnerConfig,
                 seed: int, cache: FeatureCache | None = None) -> DataLoader:
    """Evaluation loader: class-balanced with a fixed draw for KS1's dev split (s3prl), else whole clips in
    the split's longest-first order, in batches whose padded length follows the clips' own
    (``batching.length_batches``)."""
    ds = _dataset(data, split, sample_rate, False, seed, cache)
    clips = ds.ds.clips if isinstance(ds, CachedDataset) else ds.clips
    if spec.balanced_sampling and split == "dev":
        sampler = WeightedRandomSampler(class_balanced_weights(clips), len(ds),
                                        generator=torch.Generator().manual_seed(seed))
        return DataLoader(ds, batch_size=cfg.eval_batch_size, sampler=sampler, collate_fn=_collate(ds),
                          num_workers=cfg.num_workers)
    batches = length_batches([c.loaded_secs for c in clips], range(len(clips)), cfg.eval_batch_size)
    return DataLoader(ds, batch_sampler=batches, collate_fn=_collate(ds), num_workers=cfg.num_workers)


def train_loader(data: TaskData, spec: TaskSpec, sample_rate: int, cfg: RunnerConfig, seed: int, start_step: int,
                 dist_ctx: DistContext, cache: FeatureCache | None = None) -> DataLoader:
    """This rank's micro-batches from optimizer step ``start_step`` to ``cfg.total_steps`` (shuffled, or
    class-balanced for KS1; grouped by length where ``data.group_by_length``), a pure function of
    ``(seed, step)``."""
    ds = _dataset(data, "train", sample_rate, True, seed, cache)
    clips = ds.ds.clips if isinstance(ds, CachedDataset) else ds.clips
    acc = cfg.gradient_accumulate_steps
    args = (cfg.batch_size, seed, start_step * acc, cfg.total_steps * acc,
            class_balanced_weights(clips) if spec.balanced_sampling else None, dist_ctx.rank, dist_ctx.world_size)
    secs = [c.loaded_secs for c in clips]
    if data.group_by_length and None not in secs:
        sampler = LengthGroupedSampler(secs, *args, window=data.group_window)
    else:
        sampler = StepBatchSampler(len(ds), *args)
    # own generator: creating the iterator must not draw from the global RNG, or a resumed run diverges
    return DataLoader(ds, batch_sampler=sampler, collate_fn=_collate(ds), num_workers=cfg.num_workers,
                      generator=torch.Generator().manual_seed(seed))


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _to(inputs, device: torch.device):
    return inputs.to(device) if isinstance(inputs, FeatureBatch) else [w.to(device) for w in inputs]


# ------------------------------------------------------------------------------------------ loops
def train_steps(model: nn.Module, batches: Iterator, optimizer: torch.optim.Optimizer, loss_kind: str,
                num_steps: int, cfg: RunnerConfig, device: torch.device, first_step: int = 0,
                lr_at: Callable[[int], float] | None = None,
                mix: Callable[[list, torch.Tensor], tuple[list, torch.Tensor]] | None = None,
                on_step: Callable[[int, float, float, float], None] | None = None) -> list[float]:
    """``num_steps`` optimizer steps, each over ``gradient_accumulate_steps`` micro-batches.

    ``lr_at(step)`` sets the lr of each update; ``mix(wavs, labels)`` is mixup; ``on_step(step, loss, lr,
    grad_norm)`` is called after each update (``step`` counts from 1; ``grad_norm`` is the total norm before
    clipping). Returns the per-step mean loss. Raises ``FloatingPointError`` on a non-finite loss (mae).
    """
    model.train()
    losses = []
    for i in range(num_steps):
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(first_step + i)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(cfg.gradient_accumulate_steps):
            inputs, labels, _ = next(batches)
            inputs, labels = _to(inputs, device), labels.to(device)
            if mix is not None:
                inputs, labels = mix(inputs, labels)
            with _autocast(device):
                loss = compute_loss(model(inputs), labels, loss_kind)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {loss.item()} at step {first_step + i + 1}; "
                                         f"stopping. Lower optimizer.lr or check the input audio.")
            (loss / cfg.gradient_accumulate_steps).backward()
            total += loss.item() / cfg.gradient_accumulate_steps
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.gradient_clipping)
        optimizer.step()
        losses.append(total)
        if on_step is not None:
            on_step(first_step + i + 1, total, optimizer.param_groups[0]["lr"], float(grad_norm))
    return losses


def train_one_epoch(model, loader, optimizer, loss_kind, cfg: RunnerConfig, device) -> list[float]:
    """One pass over ``loader`` (``len(loader) // gradient_accumulate_steps`` optimizer steps)."""
    return train_steps(model, iter(loader), optimizer, loss_kind, len(loader) // cfg.gradient_accumulate_steps,
                       cfg, device)


@torch.no_grad()
def predict(model: DownstreamModel, loader: DataLoader, device: torch.device,
            desc: str = "evaluating") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Run ``model`` over the whole loader.

    Returns:
        ``(logits (N, C) float32, targets (N,) int64 or (N, C) multi-hot, uids)``, in the loader's order.
    """
    model.eval()
    scores, targets, uids = [], [], []
    for inputs, labels, ids in progress(loader, desc=desc, unit="batch"):
        with _autocast(device):
            scores.append(model(_to(inputs, device)).float().cpu())
        targets.append(labels)
        uids += list(ids)
    return torch.cat(scores), torch.cat(targets), uids


def score(logits: torch.Tensor, target: torch.Tensor, spec: TaskSpec) -> dict:
    """-> ``{spec.metric: value}``: mAP over sigmoid scores, or accuracy."""
    if spec.metric == "mAP":
        return {"mAP": metrics.mean_average_precision(logits.sigmoid(), target)}
    return {"accuracy": metrics.accuracy(logits, target)}


def evaluate(model: DownstreamModel, loader: DataLoader, spec: TaskSpec, device: torch.device,
             desc: str = "evaluating") -> dict:
    """-> ``{spec.metric: value}`` over the whole loader. Says so (on stdout, with the training log) when the
    predictions fall on one class (``metrics.collapse_warning``): a collapse shows while training, not only
    in the records, whose final evaluation warns on stderr."""
    logits, target, _ = predict(model, loader, device, desc)
    warning = metrics.collapse_warning(metrics.prediction_spread(logits, target)) if len(logits) else None
    if warning:
        print(f"warning: {desc}: {warning}")
    return score(logits, target, spec)


# ------------------------------------------------------------------------------------------ checkpoints
def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary name unique to this writer, then rename over ``path``."""
    tmp = temp_path(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_state_shapes(model: nn.Module, state: dict, path: Path) -> None:
    """ValueError naming the first parameter whose shape in checkpoint ``path`` differs from ``model``'s
    (e.g. another number of classes or head size), instead of torch's multi-line RuntimeError."""
    own = model.state_dict()
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise ValueError(f"checkpoint {path} does not fit this model: {key} has shape {tuple(value.shape)} "
                             f"there but {tuple(own[key].shape)} here (another number of classes, head or "
                             f"upstream?)")


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def fit(model: DownstreamModel, data: TaskData, spec: TaskSpec, cfg: DownstreamConfig, expdir: Path,
        device: torch.device, config_dict: dict, resume: bool = False,
        log: Callable[[str], None] = print, writer=None, cache: FeatureCache | None = None,
        dist_ctx: DistContext | None = None, trust_checkpoint: bool = False) -> dict:
    """Train to ``runner.total_steps``, evaluating ``data.selection_split`` every ``eval_step`` steps.

    Writes ``expdir/dev-best.ckpt`` (best selection metric), ``expdir/last.ckpt`` (resume state), with
    ``schedule.wa`` ``expdir/wa.ckpt`` (the averaged model), and one line per evaluation to
    ``expdir/evals.jsonl``; under ``torchrun`` rank 0 evaluates and writes. Every ``runner.log_step`` steps the
    mean train loss, the lr and the mean gradient norm (before clipping) since the last such line go to ``log``
    and to ``writer`` (``train/loss``, ``train/lr``, ``train/grad_norm``; rank 0's own micro-batches under
    ``torchrun``); each evaluation adds ``<split>/<metric>``. Returns ``{"best_step", "best"}``.
    ``trust_checkpoint``: let ``resume`` unpickle a ``last.ckpt`` that needs more than this project writes
    (which can run code stored in it; warns); otherwise such a file raises ``CheckpointError``.
    """
    import json

    dist_ctx = dist_ctx or DistContext()
    rc, sr, main = cfg.runner, model.upstream.sample_rate, dist_ctx.is_main
    optimizer = build_optimizer(model, cfg.optimizer, device)
    net = model
    if dist_ctx.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=model.finetune)
    aug_gen = torch.Generator(device).manual_seed(cfg.run.seed * 1000 + dist_ctx.rank)
    if cfg.augment.active:
        model.augment_inputs(cfg.augment, aug_gen)
    wa = WeightAverage() if cfg.schedule.wa else None
    step, best = 0, {"step": 0, "value": -float("inf")}
    if resume:
        state = load_checkpoint_file(expdir / "last.ckpt", trust_checkpoint, device, what="resume checkpoint")
        check_state_shapes(model, state["model"], expdir / "last.ckpt")
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        step, best = state["step"], state["best"]
        set_rng_state(state["rng"][dist_ctx.rank] if isinstance(state["rng"], list) else state["rng"])
        aug_gen.set_state(state["aug_rng"][dist_ctx.rank].cpu())
        if wa is not None and state.get("wa"):
            wa.load_state_dict(state["wa"])
        log(f"resumed from {expdir / 'last.ckpt'} at step {step}")
    if main:
        truncate_jsonl(expdir / "evals.jsonl", step)
    batches = iter(train_loader(data, spec, sr, rc, cfg.run.seed, step, dist_ctx, cache))
    loss_kind, sel = spec.loss_for(cfg.run.finetune), data.selection_split
    lr_at = lambda s: cfg.optimizer.lr * lr_factor(s, rc.eval_step, cfg.schedule)  # noqa: E731
    mix = None
    if cfg.augment.mixup > 0:
        mix = lambda w, y: mixup(w, y, data.num_classes, cfg.augment.mixup, aug_gen)  # noqa: E731
    bar = progress(total=rc.total_steps, initial=step, desc="training", unit="step", enabled=main)
    say = printer(bar, log)
    since_log: list[tuple[float, float]] = []  # (loss, grad norm) of each step since the last log_step line

    def on_step(s: int, loss: float, lr: float, grad_norm: float) -> None:
        bar.update(1)
        since_log.append((loss, grad_norm))
        if s % rc.log_step and s != rc.total_steps:
            return
        mean_loss, mean_norm = (float(v) for v in np.mean(since_log, axis=0))
        since_log.clear()
        bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
        if main:
            say(f"step {s}: train loss {mean_loss:.4f}, lr {lr:.3g}, grad norm {mean_norm:.3g}")
            if writer is not None:
                for tag, value in (("loss", mean_loss), ("lr", lr), ("grad_norm", mean_norm)):
                    writer.add_scalar(f"train/{tag}", value, s)

    try:
        while step < rc.total_steps:
            n = min(rc.eval_step - step % rc.eval_step, rc.total_steps - step)
            losses = dist_ctx.mean(train_steps(net, batches, optimizer, loss_kind, n, rc, device, step, lr_at, mix,
                                               on_step))
            step += n
            epoch = -(-step // rc.eval_step)
            if wa is not None and cfg.schedule.wa_start <= epoch <= cfg.schedule.wa_end:
                wa.add(model.trainable_state())
            rngs = dist_ctx.gather(rng_state())
            aug_rngs = dist_ctx.gather(aug_gen.get_state().cpu())
            if main:
                loader = build_loader(data, spec, sel, sr, rc, cfg.run.seed, cache)
                result = evaluate(model, loader, spec, device, desc=f"{sel} at step {step}")
                value = result[spec.metric]
                say(f"step {step}: train loss {np.mean(losses):.4f}, {sel} {spec.metric} {value:.4f}")
                if writer is not None:
                    writer.add_scalar(f"{sel}/{spec.metric}", value, step)
                with open(expdir / "evals.jsonl", "a") as f:
                    f.write(json.dumps({"step": step, "split": sel, spec.metric: value,
                                        "train_loss": float(np.mean(losses))}) + "\n")
                if value > best["value"] or best["step"] == 0:  # NaN-safe first save
                    best = {"step": step, "value": value}
                    save_atomic({"model": model.trainable_state(), "step": step, "metrics": result,
                                 "config": config_dict}, expdir / "dev-best.ckpt")
                if wa is not None and (epoch == cfg.schedule.wa_end or step == rc.total_steps) and wa.count:
                    save_atomic({"model": wa.average(), "step": step, "config": config_dict,
                                 "wa_epochs": [cfg.schedule.wa_start, min(epoch, cfg.schedule.wa_end)]},
                                expdir / "wa.ckpt")
                save_atomic({"model": model.trainable_state(), "optimizer": optimizer.state_dict(), "step": step,
                             "best": best, "rng": rngs, "aug_rng": aug_rngs, "world_size": dist_ctx.world_size,
                             "wa": wa.state_dict() if wa is not None else None, "config": config_dict},
                            expdir / "last.ckpt")
            dist_ctx.barrier()
    finally:
        bar.close()
    model.train(False)
    return {"best_step": best["step"], "best": best["value"]}


def load_for_eval(model: DownstreamModel, ckpt_path: Path, device: torch.device,
                  trust_checkpoint: bool = False) -> dict:
    """Load a ``dev-best.ckpt`` into ``model``; returns the checkpoint dict. The file is read without running
    code from it unless ``trust_checkpoint`` (``upstream.safe_load``); refusals raise ``CheckpointError``."""
    state = load_checkpoint_file(ckpt_path, trust_checkpoint, device)
    check_state_shapes(model, state["model"], ckpt_path)
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    bad = [k for k in missing if model.finetune or not k.startswith("upstream.")] + list(unexpected)
    if bad:
        raise ValueError(f"checkpoint {ckpt_path} does not match the model: {bad[:5]}")
    return state
