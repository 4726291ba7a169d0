"""Train and evaluate a downstream head on any upstream, s3prl-style, frozen (default) or fine-tuned (``-f``).

One upstream API serves both modes: ``upstream(wavs)`` gives hidden states, lengths and the clip feature.
Frozen: upstream ``.eval()`` under ``torch.no_grad()``, only Featurizer + head learn. Fine-tune: upstream
``.train()`` and its parameters join the head's in one Adam at the same lr (s3prl ``_get_optimizer``).
Model selection: evaluate ``TaskData.selection_split`` every ``eval_step`` steps, keep ``dev-best.ckpt``.
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
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, WeightedRandomSampler

from . import metrics
from .datasets import TaskData, class_balanced_weights, collate
from .featurizer import Featurizer
from .heads import PSLAHead, UtteranceHead
from .tasks import TaskSpec


# ------------------------------------------------------------------------------------------ config
@dataclass
class RunnerConfig:
    total_steps: int = 200_000  # optimizer steps (s3prl runner.total_steps)
    eval_step: int = 5000  # evaluate the selection split every this many steps
    log_step: int = 100
    batch_size: int = 32
    eval_batch_size: int = 32
    gradient_accumulate_steps: int = 1  # micro-batches per optimizer step
    gradient_clipping: float = 1.0  # s3prl default
    num_workers: int = 0


@dataclass
class OptimizerConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)  # SSAST PSLA recipe: (0.95, 0.999)
    weight_decay: float = 0.0  # SSAST PSLA recipe: 5e-7


@dataclass
class HeadConfig:
    kind: Literal["utterance", "psla"] = "utterance"  # s3prl UtteranceLevel | SSAST ft_avgtok mlp_head
    feature: Literal["hidden_states", "last_hidden_state"] = "hidden_states"  # s3prl -s
    proj_dim: int = 256


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


@dataclass
class DownstreamConfig:
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    upstream_overrides: dict = field(default_factory=dict)  # passed to upstream.load (e.g. window_secs)
    run: RunConfig = field(default_factory=RunConfig)


# ------------------------------------------------------------------------------------------ model
class DownstreamModel(nn.Module):
    """upstream -> Featurizer -> UtteranceHead, or upstream clip feature -> PSLAHead. Returns logits."""

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

    def train(self, mode: bool = True) -> "DownstreamModel":
        super().train(mode)
        if not self.finetune:
            self.upstream.eval()  # frozen probe: no dropout, no norm-statistic updates
        return self

    def forward(self, wavs: list[torch.Tensor]) -> torch.Tensor:
        with torch.set_grad_enabled(self.finetune and self.training and torch.is_grad_enabled()):
            out = self.upstream(wavs)
        if self.kind == "psla":
            return self.head(out["clip"])
        feats = self.featurizer(out["hidden_states"]) if self.featurizer is not None else out["last_hidden_state"]
        return self.head(feats, out["lengths"])

    def trainable_state(self) -> dict:
        """Weights the run learned: head + featurizer, plus the upstream when fine-tuned."""
        return {k: v for k, v in self.state_dict().items() if self.finetune or not k.startswith("upstream.")}


def compute_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """``'ce'`` on class indices, or ``'bce'`` on multi-hot / one-hot targets (SSAST KS2 recipe)."""
    logits = logits.float()
    if kind == "bce":
        target = labels.float() if labels.ndim == 2 else F.one_hot(labels, logits.shape[-1]).float()
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.cross_entropy(logits, labels)


def build_optimizer(model: DownstreamModel, cfg: OptimizerConfig, device: torch.device) -> torch.optim.Adam:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                            fused=device.type == "cuda")


def build_loader(data: TaskData, spec: TaskSpec, split: str, sample_rate: int, cfg: RunnerConfig,
                 seed: int) -> DataLoader:
    """Train: shuffled (class-balanced for KS1); dev: class-balanced for KS1 with a fixed draw; else in order."""
    train = split == "train"
    ds = data.dataset(split, sample_rate, train=train, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    if spec.balanced_sampling and split in ("train", "dev"):
        sampler = WeightedRandomSampler(class_balanced_weights(ds.clips), len(ds), generator=gen)
    else:
        sampler = RandomSampler(ds, generator=gen) if train else SequentialSampler(ds)
    return DataLoader(ds, batch_size=cfg.batch_size if train else cfg.eval_batch_size, sampler=sampler,
                      collate_fn=collate, num_workers=cfg.num_workers, drop_last=False)


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# ------------------------------------------------------------------------------------------ loops
def train_steps(model: DownstreamModel, batches: Iterator, optimizer: torch.optim.Optimizer, loss_kind: str,
                num_steps: int, cfg: RunnerConfig, device: torch.device, first_step: int = 0) -> list[float]:
    """``num_steps`` optimizer steps, each over ``gradient_accumulate_steps`` micro-batches.

    Returns the per-step mean loss. Raises ``FloatingPointError`` on a non-finite loss (mae).
    """
    model.train()
    losses = []
    for i in range(num_steps):
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(cfg.gradient_accumulate_steps):
            wavs, labels, _ = next(batches)
            with _autocast(device):
                loss = compute_loss(model([w.to(device) for w in wavs]), labels.to(device), loss_kind)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {loss.item()} at step {first_step + i + 1}; "
                                         f"stopping. Lower optimizer.lr or check the input audio.")
            (loss / cfg.gradient_accumulate_steps).backward()
            total += loss.item() / cfg.gradient_accumulate_steps
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.gradient_clipping)
        optimizer.step()
        losses.append(total)
    return losses


def train_one_epoch(model, loader, optimizer, loss_kind, cfg: RunnerConfig, device) -> list[float]:
    """One pass over ``loader`` (``len(loader) // gradient_accumulate_steps`` optimizer steps)."""
    return train_steps(model, iter(loader), optimizer, loss_kind, len(loader) // cfg.gradient_accumulate_steps,
                       cfg, device)


@torch.no_grad()
def evaluate(model: DownstreamModel, loader: DataLoader, spec: TaskSpec, device: torch.device) -> dict:
    """-> ``{spec.metric: value}`` over the whole loader."""
    model.eval()
    scores, targets = [], []
    for wavs, labels, _ in loader:
        with _autocast(device):
            scores.append(model([w.to(device) for w in wavs]).float().cpu())
        targets.append(labels)
    logits, target = torch.cat(scores), torch.cat(targets)
    if spec.metric == "mAP":
        return {"mAP": metrics.mean_average_precision(logits.sigmoid(), target)}
    return {"accuracy": metrics.accuracy(logits, target)}


# ------------------------------------------------------------------------------------------ checkpoints
def save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _forever(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def fit(model: DownstreamModel, data: TaskData, spec: TaskSpec, cfg: DownstreamConfig, expdir: Path,
        device: torch.device, config_dict: dict, resume: bool = False,
        log: Callable[[str], None] = print, writer=None) -> dict:
    """Train to ``runner.total_steps``, evaluating ``data.selection_split`` every ``eval_step`` steps.

    Writes ``expdir/dev-best.ckpt`` (best selection metric) and ``expdir/last.ckpt`` (resume state), and one
    line per evaluation to ``expdir/evals.jsonl``. Returns ``{"best_step", "best"}``.
    """
    import json

    rc, sr = cfg.runner, model.upstream.sample_rate
    optimizer = build_optimizer(model, cfg.optimizer, device)
    step, best = 0, {"step": 0, "value": -float("inf")}
    if resume:
        state = torch.load(expdir / "last.ckpt", map_location=device, weights_only=False)
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        step, best = state["step"], state["best"]
        set_rng_state(state["rng"])
        log(f"resumed from {expdir / 'last.ckpt'} at step {step}")
    batches = _forever(build_loader(data, spec, "train", sr, rc, cfg.run.seed + step))
    loss_kind, sel = spec.loss_for(cfg.run.finetune), data.selection_split
    while step < rc.total_steps:
        n = min(rc.eval_step - step % rc.eval_step, rc.total_steps - step)
        losses = train_steps(model, batches, optimizer, loss_kind, n, rc, device, first_step=step)
        step += n
        if writer is not None:
            writer.add_scalar("train/loss", float(np.mean(losses)), step)
        result = evaluate(model, build_loader(data, spec, sel, sr, rc, cfg.run.seed), spec, device)
        value = result[spec.metric]
        log(f"step {step}: train loss {np.mean(losses):.4f}, {sel} {spec.metric} {value:.4f}")
        if writer is not None:
            writer.add_scalar(f"{sel}/{spec.metric}", value, step)
        with open(expdir / "evals.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "split": sel, spec.metric: value}) + "\n")
        if value > best["value"] or best["step"] == 0:  # NaN-safe first save
            best = {"step": step, "value": value}
            save_atomic({"model": model.trainable_state(), "step": step, "metrics": result,
                         "config": config_dict}, expdir / "dev-best.ckpt")
        save_atomic({"model": model.trainable_state(), "optimizer": optimizer.state_dict(), "step": step,
                     "best": best, "rng": rng_state(), "config": config_dict}, expdir / "last.ckpt")
    return {"best_step": best["step"], "best": best["value"]}


def load_for_eval(model: DownstreamModel, ckpt_path: Path, device: torch.device) -> dict:
    """Load a ``dev-best.ckpt`` into ``model``; returns the checkpoint dict."""
    state = torch.load(ckpt_path, map_location=device, weights_only=False)
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    bad = [k for k in missing if model.finetune or not k.startswith("upstream.")] + list(unexpected)
    if bad:
        raise ValueError(f"checkpoint {ckpt_path} does not match the model: {bad[:5]}")
    return state
