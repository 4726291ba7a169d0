"""Learning-rate and weight-decay schedules of pretraining, per optimizer step (``OptimConfig``).

Warm-up (linear every step, or SSAST's stepwise), then constant, cosine (DINO/ASiT), polynomial (fairseq,
MAE-AST) or SSAST's plateau halving of the training loss; the weight decay follows DINO's cosine when
``weight_decay_end`` is set. The state that plateau halving keeps is checkpointed for an exact resume.
"""
from __future__ import annotations

import logging
import math

import torch

from .config import OptimConfig

__all__ = ["Schedule"]

log = logging.getLogger(__name__)


class Schedule:
    """Learning rate and weight decay per step (0-based index of the update about to be applied)."""

    def __init__(self, cfg: OptimConfig, max_steps: int):
        self.cfg, self.max_steps = cfg, max_steps
        self.scale, self.best, self.bad, self.window = 1.0, math.inf, 0, []  # plateau_halving state

    def _progress(self, step: int) -> float:
        span = max(1, self.max_steps - self.cfg.warmup_steps)
        return min(1.0, max(0.0, (step - self.cfg.warmup_steps) / span))

    def lr(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            # SSAST: if global_step <= 1000 and global_step % 50 == 0: lr = global_step / 1000 * lr
            if c.warmup == "step":
                return c.lr * (step - step % c.warmup_every) / c.warmup_steps
            return c.lr * (step + 1) / c.warmup_steps
        p = self._progress(step)
        if c.schedule == "cosine":
            return c.min_lr + (c.lr - c.min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))
        if c.schedule == "polynomial":
            return c.min_lr + (c.lr - c.min_lr) * (1.0 - p) ** c.poly_power
        return c.lr * self.scale  # constant (scale stays 1) or plateau_halving

    def weight_decay(self, step: int) -> float:
        c = self.cfg
        if c.weight_decay_end is None:
            return c.weight_decay
        p = min(1.0, step / max(1, self.max_steps - 1))
        cosine = 0.5 * (1.0 + math.cos(math.pi * p))
        return c.weight_decay_end + (c.weight_decay - c.weight_decay_end) * cosine

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> tuple[float, float]:
        lr, wd = self.lr(step), self.weight_decay(step)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
            g["weight_decay"] = wd * g["wd_scale"]
        return lr, wd

    def observe(self, step: int, loss: float) -> None:
        """Feed the step's loss (plateau_halving only): ReduceLROnPlateau(mode='min', threshold 1e-4 rel)."""
        if self.cfg.schedule != "plateau_halving" or step < self.cfg.warmup_steps:
            return
        self.window.append(loss)
        if len(self.window) < self.cfg.plateau_every:
            return
        mean, self.window = sum(self.window) / len(self.window), []
        if mean < self.best * (1.0 - 1e-4) if self.best > 0 else mean < self.best:
            self.best, self.bad = mean, 0
        else:
            self.bad += 1
            if self.bad > self.cfg.plateau_patience:
                self.scale, self.bad = self.scale * self.cfg.plateau_factor, 0
                log.info("plateau: training loss has not improved for %d windows; lr scale now %g",
                         self.cfg.plateau_patience + 1, self.scale)

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad": self.bad, "window": list(self.window)}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best = state["scale"], state["best"]
        self.bad, self.window = state["bad"], list(state["window"])
