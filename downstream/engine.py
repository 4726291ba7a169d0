"""Train and evaluate a downstream head, s3prl-style: loaders, the training loop and its checkpoints, scores.

``fit`` trains to ``runner.total_steps`` and evaluates ``TaskData.selection_split`` every ``eval_step`` steps,
keeping ``dev-best.ckpt`` (s3prl's model selection), ``last.ckpt`` (exact resume) and, with ``schedule.wa``,
``wa.ckpt``. Frozen runs read upstream features from ``downstream.cache``; ``-f`` PSLA runs add
``downstream.augment``; training batches come from ``common.distributed.StepBatchSampler`` (a pure function of
seed and step: exact resume, ``torchrun`` ranks). The task's :class:`~downstream.tasks.TaskSpec` gives the
loss and the metric. Under ``-f`` the upstream may learn at its own lr, decayed block by block
(:func:`param_groups`).
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


# ------------------------------------------------------------------------------------------ optimizer
def upstream_blocks(upstream: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The upstream's blocks for layer-wise lr decay, found through the contract's ``num_layers``: the one
    ``nn.ModuleList`` (outermost) of ``num_layers`` modules with parameters (this project's upstreams:
    ``encoder.blocks``, one ``hidden_states`` entry per block), else the one of ``num_layers - 1`` (an s3prl
    expert, whose ``hidden_states`` start with the input embedding). Returns ``(name, blocks)``, or None when
    there is no such list, or several (a plug-in then learns at one upstream lr)."""
    num_layers = getattr(upstream, "num_layers", None)
    if not isinstance(num_layers, int):
        return None
    lists = [(name, m) for name, m in upstream.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) and all(any(True for _ in b.parameters()) for b in m)]
    for size in (num_layers, num_layers - 1):
        found = [(name, m) for name, m in lists if len(m) == size]
        found = [(name, m) for name, m in found  # outermost: not inside another list of this size
                 if not any(other != name and name.startswith(other + ".") for other, _ in found)]
        if len(found) == 1:
            return found[0]
        if found:
            return None
    return None


def upstream_layer_ids(upstream: nn.Module) -> tuple[dict[str, int], int] | None:
    """Each upstream parameter's layer for layer-wise lr decay, as BEiT's ``get_layer_id``: 0 for what is
    registered before the blocks (embeddings), ``i + 1`` inside block ``i``, ``L + 1`` after them (the final
    norm). Returns ``({parameter name: layer}, L)``, or None when :func:`upstream_blocks` finds none."""
    found = upstream_blocks(upstream)
    if found is None:
        return None
    prefix, blocks = found[0] + ".", found[1]
    ids, past = {}, False
    for name, _ in upstream.named_parameters():
        if name.startswith(prefix):
            ids[name], past = int(name[len(prefix):].split(".", 1)[0]) + 1, True
        else:
            ids[name] = len(blocks) + 1 if past else 0
    return ids, len(blocks)


def param_groups(model: DownstreamModel, cfg: OptimizerConfig) -> list[dict]:
    """The parameter groups of a ``-f`` run with ``upstream_lr_scale`` / ``layer_decay``: the head's
    (featurizer included) first at ``lr_scale`` 1, then the upstream's, one per layer (see
    :class:`~downstream.config.OptimizerConfig`), each with its ``lr_scale`` (times ``optimizer.lr`` at every
    step), ``lr`` and a ``name``. An upstream without blocks to find (:func:`upstream_blocks`) gets one group
    at ``upstream_lr_scale``; only trainable parameters are grouped."""
    head = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("upstream.")]
    groups = [{"name": "head", "params": head, "lr_scale": 1.0}]
    found = upstream_layer_ids(model.upstream) if cfg.layer_decay != 1.0 else None
    ups = [(n, p) for n, p in model.upstream.named_parameters() if p.requires_grad]
    if found is None:
        groups.append({"name": "upstream", "params": [p for _, p in ups], "lr_scale": cfg.upstream_lr_scale})
    else:
        ids, num_blocks = found
        for layer in range(num_blocks + 2):
            params = [p for n, p in ups if ids[n] == layer]
            name = "embeddings" if layer == 0 else "top" if layer == num_blocks + 1 else f"block{layer - 1}"
            scale = cfg.upstream_lr_scale * cfg.layer_decay ** (num_blocks + 1 - layer)
            groups.append({"name": f"upstream.{name}", "params": params, "lr_scale": scale})
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    return groups


def build_optimizer(model: DownstreamModel, cfg: OptimizerConfig, device: torch.device,
                    log: Callable[[str], None] | None = None) -> torch.optim.Adam:
    """Adam (fused kernels where the device has them) over every trainable parameter: the head's, plus the
    upstream's under ``-f``. By default at one lr (s3prl ``_get_optimizer``); with ``upstream_lr_scale`` or
    ``layer_decay`` the groups of :func:`param_groups`, each with its ``lr_scale``, which ``log`` is told.

    Raises:
        ValueError: ``upstream_lr_scale`` / ``layer_decay`` set for a frozen run, where they would do nothing.
    """
    if not cfg.scaled:
        params = [p for p in model.parameters() if p.requires_grad]
        return make_adam(params, device, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if not model.finetune:
        raise ValueError("optimizer.upstream_lr_scale / layer_decay are set but this is a frozen run: they "
                         "set the upstream's lr under -f only")
    groups = param_groups(model, cfg)
    if log is not None:
        if cfg.layer_decay != 1.0 and not any(g["name"].startswith("upstream.") for g in groups):
            log(f"optimizer: no blocks found in upstream {type(model.upstream).__name__} (no nn.ModuleList "
                f"of num_layers modules), so optimizer.layer_decay does not apply: one upstream lr")
        log("optimizer: lr x " + ", ".join(f"{g['name']} {g['lr_scale']:.4g}" for g in groups))
    return make_adam(groups, device, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


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
    each update (times each parameter group's ``lr_scale``); ``mix(wavs, labels)`` is mixup;
    ``on_step(step, loss, lr, grad_norm)`` is called after each update (``step`` counts from 1; ``lr`` is the
    first group's, the head's; ``grad_norm`` is the total norm before clipping). Returns the per-step mean
    loss. Raises ``FloatingPointError`` on a non-finite loss (mae).
    """
    model.train()
    losses = []
    for i in range(num_steps):
        if lr_at is not None:
            lr = lr_at(first_step + i)
            for group in optimizer.param_groups:  # lr_scale: build_optimizer's per-group multiple
                group["lr"] = lr * group.get("lr_scale", 1.0)
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
             desc: str = "evaluating", per_clip: dict | None = None) -> float:
    """The task's metric over the whole loader. Says so (on stdout, with the training log) when the
    predictions fall on one class (``metrics.collapse_warning``): a collapse shows while training, not only in
    the records, whose final evaluation warns on stderr. ``per_clip`` (single-label tasks) is filled with
    which clips were right (``metrics.per_clip_correctness``)."""
    logits, target, uids = predict(model, loader, device, desc)
    warning = metrics.collapse_warning(metrics.prediction_spread(logits, target)) if len(logits) else None
    if warning:
        print(f"warning: {desc}: {warning}")
    if per_clip is not None and len(logits):
        per_clip.update(metrics.per_clip_correctness(logits, target, uids))
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
        self.optimizer = build_optimizer(model, cfg.optimizer, ctx.device,
                                         ctx.log if dist_ctx.is_main else None)
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
        was = state.get("config", {}).get("runner", {}).get("total_steps")
        if ctx.cfg.schedule.warmup_decay and was not in (None, ctx.cfg.runner.total_steps):
            ctx.log(f"warning: runner.total_steps is {ctx.cfg.runner.total_steps} but was {was}: the "
                    f"warm-up + decay schedule now runs over the new total, so the lr from step {self.step} "
                    f"on is not the one either run would have had")

    def lr_at(self, step: int) -> float:
        cfg = self.ctx.cfg
        return cfg.optimizer.lr * lr_factor(step, cfg.runner.eval_step, cfg.schedule, cfg.runner.total_steps)

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
        # which clips were right at this step (single-label): ESC-50's fold-averaged selection picks a step
        # after training, and its records carry the clips of that step (benchmark.suites.select_fold_runs)
        clips: dict | None = None if data.multilabel else {}
        value = evaluate(self.model, loader, ctx.spec, ctx.device, desc=f"{sel} at step {step}",
                         per_clip=clips)
        say(f"step {step}: train loss {train_loss:.4f}, {sel} {metric} {value:.4f}")
        if ctx.writer is not None:
            ctx.writer.add_scalar(f"{sel}/{metric}", value, step)
        with open(ctx.expdir / "evals.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "split": sel, metric: value,
                                "train_loss": train_loss, **(clips or {})}) + "\n")
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
