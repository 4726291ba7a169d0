"""Train and evaluate a downstream head, s3prl-style: loaders, the training loop and its checkpoints, scores.

``fit`` trains to ``runner.total_steps`` and evaluates ``TaskData.selection_split`` every ``eval_step`` steps,
keeping ``dev-best.ckpt`` (s3prl's model selection), ``last.ckpt`` (exact resume) and, with ``schedule.wa``,
``wa.ckpt``. Frozen runs read upstream features from ``downstream.cache``; ``-f`` PSLA runs add
``downstream.augment``; training batches come from ``common.distributed.StepBatchSampler`` (a pure function of
seed and step: exact resume, ``torchrun`` ranks). The task's :class:`~downstream.tasks.TaskSpec` gives the
loss and the metric.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, WeightedRandomSampler

from common.config import config_to_dict
from common.distributed import DistContext, StepBatchSampler
from common.files import torch_save_atomic
from common.optim import clip_gradients, make_adam
from common.rng import rng_state, set_rng_state
from common.rundir import truncate_jsonl
from upstream.safe_load import load_checkpoint_file

from . import metrics
from .augment import WeightAverage, lr_factor, mixup
from .batching import LengthGroupedSampler, length_batches
from .cache import CachedDataset, FeatureBatch, FeatureCache, collate_features
from .config import DownstreamConfig, OptimizerConfig, RunnerConfig
from .datasets import TaskData, class_balanced_weights, collate
from .model import DownstreamModel
from .progress import printer, progress
from .tasks import TaskSpec


@dataclass
class FitContext:
    """What a run trains and evaluates with, besides the model and the data.

    Attributes:
        cfg: the run's resolved configuration (saved in every checkpoint).
        spec: the task: loss, metric, class-balanced sampling.
        expdir: the run folder (checkpoints, ``evals.jsonl``).
        device: where the model runs.
        dist: this process's rank under ``torchrun`` (rank 0 evaluates and writes); one process by default.
        cache: the frozen-feature cache, None to run the upstream on every batch.
        writer: a tensorboard ``SummaryWriter`` (rank 0), or None.
        log: where the training log lines go.
        trust_checkpoint: let a resume unpickle a ``last.ckpt`` that needs more than this project writes
            (which can run code stored in it; warns); otherwise such a file raises ``CheckpointError``.
    """

    cfg: DownstreamConfig
    spec: TaskSpec
    expdir: Path
    device: torch.device
    dist: DistContext = field(default_factory=DistContext)
    cache: FeatureCache | None = None
    writer: Any = None
    log: Callable[[str], None] = print
    trust_checkpoint: bool = False


def build_optimizer(model: DownstreamModel, cfg: OptimizerConfig, device: torch.device) -> torch.optim.Adam:
    """One Adam over every trainable parameter at one lr: the head's, plus the upstream's under ``-f``
    (s3prl ``_get_optimizer``)."""
    params = [p for p in model.parameters() if p.requires_grad]  # fused kernels where the device has them
    return make_adam(params, device, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


# ------------------------------------------------------------------------------------------ loaders
def _dataset(data: TaskData, split: str, sample_rate: int, train: bool, seed: int,
             cache: FeatureCache | None):
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


def train_loader(data: TaskData, spec: TaskSpec, sample_rate: int, cfg: RunnerConfig, seed: int,
                 start_step: int, dist_ctx: DistContext, cache: FeatureCache | None = None) -> DataLoader:
    """This rank's micro-batches from optimizer step ``start_step`` to ``cfg.total_steps`` (shuffled, or
    class-balanced for KS1; grouped by length where ``data.group_by_length``), a pure function of
    ``(seed, step)``."""
    ds = _dataset(data, "train", sample_rate, True, seed, cache)
    clips = ds.ds.clips if isinstance(ds, CachedDataset) else ds.clips
    acc = cfg.gradient_accumulate_steps
    weights = class_balanced_weights(clips) if spec.balanced_sampling else None
    args = (cfg.batch_size, seed, start_step * acc, cfg.total_steps * acc, weights, dist_ctx.rank,
            dist_ctx.world_size)
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
def train_steps(model: nn.Module, batches: Iterator, optimizer: torch.optim.Optimizer,
                loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], num_steps: int,
                cfg: RunnerConfig, device: torch.device, first_step: int = 0,
                lr_at: Callable[[int], float] | None = None,
                mix: Callable[[list, torch.Tensor], tuple[list, torch.Tensor]] | None = None,
                on_step: Callable[[int, float, float, float], None] | None = None) -> list[float]:
    """``num_steps`` optimizer steps, each over ``gradient_accumulate_steps`` micro-batches.

    ``loss_fn(logits, labels)`` is the task's loss (``TaskSpec.loss_for``); ``lr_at(step)`` sets the lr of
    each update; ``mix(wavs, labels)`` is mixup; ``on_step(step, loss, lr, grad_norm)`` is called after each
    update (``step`` counts from 1; ``grad_norm`` is the total norm before clipping). Returns the per-step
    mean loss. Raises ``FloatingPointError`` on a non-finite loss (mae).
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
                loss = loss_fn(model(inputs), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {loss.item()} at step "
                                         f"{first_step + i + 1}; stopping. Lower optimizer.lr or check the "
                                         f"input audio.")
            (loss / cfg.gradient_accumulate_steps).backward()
            total += loss.item() / cfg.gradient_accumulate_steps
        grad_norm = clip_gradients(model.parameters(), cfg.gradient_clipping)
        optimizer.step()
        losses.append(total)
        if on_step is not None:
            on_step(first_step + i + 1, total, optimizer.param_groups[0]["lr"], float(grad_norm))
    return losses


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


def evaluate(model: DownstreamModel, loader: DataLoader, spec: TaskSpec, device: torch.device,
             desc: str = "evaluating") -> float:
    """The task's metric over the whole loader. Says so (on stdout, with the training log) when the
    predictions fall on one class (``metrics.collapse_warning``): a collapse shows while training, not only in
    the records, whose final evaluation warns on stderr."""
    logits, target, _ = predict(model, loader, device, desc)
    warning = metrics.collapse_warning(metrics.prediction_spread(logits, target)) if len(logits) else None
    if warning:
        print(f"warning: {desc}: {warning}")
    return spec.metric(logits, target)


# ------------------------------------------------------------------------------------------ checkpoints
def check_state_shapes(model: nn.Module, state: dict, path: Path) -> None:
    """ValueError naming the first parameter whose shape in checkpoint ``path`` differs from ``model``'s
    (e.g. another number of classes or head size), instead of torch's multi-line RuntimeError."""
    own = model.state_dict()
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise ValueError(f"checkpoint {path} does not fit this model: {key} has shape "
                             f"{tuple(value.shape)} there but {tuple(own[key].shape)} here (another number "
                             f"of classes, head or upstream?)")


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


# ------------------------------------------------------------------------------------------ fit
class _StepLog:
    """Every ``runner.log_step`` steps (and at the last), the mean train loss, the lr and the mean gradient
    norm (before clipping) since the previous line, to the log and to tensorboard (``train/loss``,
    ``train/lr``, ``train/grad_norm``); rank 0's own micro-batches under ``torchrun``."""

    def __init__(self, ctx: FitContext, bar, say: Callable[[str], None]):
        self.ctx, self.bar, self.say = ctx, bar, say
        self.since: list[tuple[float, float]] = []  # (loss, grad norm) of each step since the last line

    def __call__(self, step: int, loss: float, lr: float, grad_norm: float) -> None:
        rc = self.ctx.cfg.runner
        self.bar.update(1)
        self.since.append((loss, grad_norm))
        if step % rc.log_step and step != rc.total_steps:
            return
        mean_loss, mean_norm = (float(v) for v in np.mean(self.since, axis=0))
        self.since.clear()
        self.bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
        if self.ctx.dist.is_main:
            self.say(f"step {step}: train loss {mean_loss:.4f}, lr {lr:.3g}, grad norm {mean_norm:.3g}")
            if self.ctx.writer is not None:
                for tag, value in (("loss", mean_loss), ("lr", lr), ("grad_norm", mean_norm)):
                    self.ctx.writer.add_scalar(f"train/{tag}", value, step)


class _Trainer:
    """What one run trains with and where it stands: the model (wrapped for ``torchrun``), its optimizer, the
    augmentation generator, the weight average, ``step`` and ``best``; everything ``last.ckpt`` keeps."""

    def __init__(self, model: DownstreamModel, data: TaskData, ctx: FitContext):
        cfg, dist_ctx = ctx.cfg, ctx.dist
        self.model, self.data, self.ctx = model, data, ctx
        self.config_dict = config_to_dict(cfg)
        self.optimizer = build_optimizer(model, cfg.optimizer, ctx.device)
        self.net: nn.Module = model
        if dist_ctx.enabled:
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.net = DistributedDataParallel(model, device_ids=device_ids,
                                               find_unused_parameters=model.finetune)
        self.aug_gen = torch.Generator(ctx.device).manual_seed(cfg.run.seed * 1000 + dist_ctx.rank)
        if cfg.augment.active:
            model.augment_inputs(cfg.augment, self.aug_gen)
        self.wa = WeightAverage() if cfg.schedule.wa else None
        self.step, self.best = 0, {"step": 0, "value": -float("inf")}

    def resume(self) -> None:
        """Continue from ``last.ckpt``: weights, optimizer, step, best, the generators, the weight average."""
        ctx, path = self.ctx, self.ctx.expdir / "last.ckpt"
        state = load_checkpoint_file(path, ctx.trust_checkpoint, ctx.device, what="resume checkpoint")
        check_state_shapes(self.model, state["model"], path)
        self.model.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.best = state["step"], state["best"]
        rank = ctx.dist.rank
        set_rng_state(state["rng"][rank] if isinstance(state["rng"], list) else state["rng"])
        self.aug_gen.set_state(state["aug_rng"][rank].cpu())
        if self.wa is not None and state.get("wa"):
            self.wa.load_state_dict(state["wa"])
        ctx.log(f"resumed from {path} at step {self.step}")

    def lr_at(self, step: int) -> float:
        cfg = self.ctx.cfg
        return cfg.optimizer.lr * lr_factor(step, cfg.runner.eval_step, cfg.schedule)

    def mix(self, wavs: list[torch.Tensor], labels: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        return mixup(wavs, labels, self.data.num_classes, self.ctx.cfg.augment.mixup, self.aug_gen)

    def evaluate_and_save(self, epoch: int, train_loss: float, rngs: list, aug_rngs: list,
                          say: Callable[[str], None]) -> None:
        """Rank 0, after each ``eval_step`` steps: score the selection split, log it, keep ``dev-best.ckpt``
        (and ``wa.ckpt``), and write ``last.ckpt`` with every rank's generators."""
        ctx, cfg, data, step = self.ctx, self.ctx.cfg, self.data, self.step
        sel, metric = data.selection_split, str(ctx.spec.metric)
        loader = build_loader(data, ctx.spec, sel, self.model.upstream.sample_rate, cfg.runner, cfg.run.seed,
                              ctx.cache)
        value = evaluate(self.model, loader, ctx.spec, ctx.device, desc=f"{sel} at step {step}")
        say(f"step {step}: train loss {train_loss:.4f}, {sel} {metric} {value:.4f}")
        if ctx.writer is not None:
            ctx.writer.add_scalar(f"{sel}/{metric}", value, step)
        with open(ctx.expdir / "evals.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "split": sel, metric: value,
                                "train_loss": train_loss}) + "\n")
        if value > self.best["value"] or self.best["step"] == 0:  # NaN-safe first save
            self.best = {"step": step, "value": value}
            torch_save_atomic({"model": self.model.trainable_state(), "step": step,
                               "metrics": {metric: value}, "config": self.config_dict},
                              ctx.expdir / "dev-best.ckpt")
        wa, schedule = self.wa, cfg.schedule
        if wa is not None and (epoch == schedule.wa_end or step == cfg.runner.total_steps) and wa.count:
            torch_save_atomic({"model": wa.average(), "step": step, "config": self.config_dict,
                               "wa_epochs": [schedule.wa_start, min(epoch, schedule.wa_end)]},
                              ctx.expdir / "wa.ckpt")
        torch_save_atomic({"model": self.model.trainable_state(), "optimizer": self.optimizer.state_dict(),
                           "step": step, "best": self.best, "rng": rngs, "aug_rng": aug_rngs,
                           "world_size": ctx.dist.world_size,
                           "wa": wa.state_dict() if wa is not None else None, "config": self.config_dict},
                          ctx.expdir / "last.ckpt")


def fit(model: DownstreamModel, data: TaskData, ctx: FitContext, resume: bool = False) -> dict:
    """Train to ``runner.total_steps``, evaluating ``data.selection_split`` every ``eval_step`` steps.

    Writes ``expdir/dev-best.ckpt`` (best selection metric), ``expdir/last.ckpt`` (resume state), with
    ``schedule.wa`` ``expdir/wa.ckpt`` (the averaged model), and one line per evaluation to
    ``expdir/evals.jsonl``; under ``torchrun`` rank 0 evaluates and writes. The training log is
    :class:`_StepLog`'s; each evaluation adds ``<split>/<metric>`` to tensorboard. Returns ``{"best_step",
    "best"}``.
    """
    cfg, dist_ctx, rc = ctx.cfg, ctx.dist, ctx.cfg.runner
    t = _Trainer(model, data, ctx)
    if resume:
        t.resume()
    if dist_ctx.is_main:
        truncate_jsonl(ctx.expdir / "evals.jsonl", t.step)
    batches = iter(train_loader(data, ctx.spec, model.upstream.sample_rate, rc, cfg.run.seed, t.step,
                                dist_ctx, ctx.cache))
    loss_fn = ctx.spec.loss_for(cfg.run.finetune)
    mix = t.mix if cfg.augment.mixup > 0 else None
    bar = progress(total=rc.total_steps, initial=t.step, desc="training", unit="step",
                   enabled=dist_ctx.is_main)
    say = printer(bar, ctx.log)
    on_step = _StepLog(ctx, bar, say)
    try:
        while t.step < rc.total_steps:
            n = min(rc.eval_step - t.step % rc.eval_step, rc.total_steps - t.step)
            losses = dist_ctx.mean(train_steps(t.net, batches, t.optimizer, loss_fn, n, rc, ctx.device,
                                               t.step, t.lr_at, mix, on_step))
            t.step += n
            epoch = -(-t.step // rc.eval_step)
            if t.wa is not None and cfg.schedule.wa_start <= epoch <= cfg.schedule.wa_end:
                t.wa.add(model.trainable_state())
            rngs = dist_ctx.gather(rng_state())
            aug_rngs = dist_ctx.gather(t.aug_gen.get_state().cpu())
            if dist_ctx.is_main:
                t.evaluate_and_save(epoch, float(np.mean(losses)), rngs, aug_rngs, say)
            dist_ctx.barrier()
    finally:
        bar.close()
    model.train(False)
    return {"best_step": t.best["step"], "best": t.best["value"]}
