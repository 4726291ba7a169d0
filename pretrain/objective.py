"""What pretraining trains: the objective a recipe names, and its optimizer.

An objective follows :class:`upstream.objective.Objective`: ``family``, ``num_views`` (1, or 2 for ASiT),
``frontend`` (:class:`~upstream.frontend.FbankConfig`, sample rate included), ``crop_secs`` (None = whole
clips), ``forward(fbank (B, [V,] T, F), num_frames (B, [V]), generator) -> (loss, {name: scalar})``,
``after_step(i, total_steps)``, ``param_groups(weight_decay)`` and ``to_upstream()``. The three families come
from their :class:`~upstream.registry.FamilySpec`; ``objective.family: package.module:builder`` plugs in
one's own.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from common.config import ConfigError
from common.optim import make_adam
from upstream.registry import get_family, resolve_builder

from .config import OptimConfig

__all__ = ["build_objective", "build_optimizer"]

log = logging.getLogger(__name__)


def build_objective(cfg: Mapping) -> nn.Module:
    """Build the objective named by ``cfg['family']``; the family's builder checks the other keys.

    Raises:
        ConfigError: an unknown family, or an unknown or invalid objective key (named by the family).
    """
    family = cfg.get("family")
    plugin = isinstance(family, str) and ":" in family
    try:
        builder = resolve_builder(family) if plugin else get_family(family).build_objective
    except ValueError as err:  # an unknown family, or a plug-in whose module or builder cannot be found
        hint = "" if plugin else ", or 'package.module:builder' for one's own"
        raise ConfigError(f"objective.family: {' '.join(str(err).split())}{hint}") from None
    try:
        return builder(dict(cfg))
    except (TypeError, ValueError) as err:  # unknown or invalid objective keys, named by the family
        raise ConfigError(f"objective: {err}") from err


def build_optimizer(objective: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adam or AdamW over ``objective.param_groups``, each group keeping its decay multiplier as ``wd_scale``
    (``pretrain.schedule.Schedule.apply`` sets ``weight_decay = schedule value x wd_scale`` every step).

    Raises:
        ValueError: a parameter listed in two groups.
    """
    groups = objective.param_groups(1.0)  # weight_decay 1.0 reveals each group's decay multiplier
    seen: set[int] = set()
    for g in groups:
        g["params"] = list(g["params"])
        g["wd_scale"] = float(g.get("weight_decay", 1.0))
        g["weight_decay"] = cfg.weight_decay * g["wd_scale"]
        for p in g["params"]:
            if id(p) in seen:
                raise ValueError(f"{type(objective).__name__}.param_groups lists a parameter twice")
            seen.add(id(p))
    missing = [n for n, p in objective.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        log.warning("%d trainable parameters are in no optimizer group and will not train, e.g. %s",
                    len(missing), missing[:3])
    return make_adam(groups, device, name=cfg.name, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
