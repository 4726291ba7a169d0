"""A pretraining run's checkpoints: ``last.ckpt`` (everything a resume needs) and ``upstream.pt`` (the encoder
as an upstream), written atomically, and the checks a resume makes before trusting ``last.ckpt``."""
from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from common.config import ConfigError, config_to_dict
from common.files import torch_save_atomic
from common.rng import rng_state
from upstream.checkpoint import CheckpointError, save_upstream
from upstream.safe_load import load_checkpoint_file

from .config import PretrainConfig
from .schedule import Schedule

__all__ = ["CKPT_FORMAT", "CKPT_VERSION", "load_resume_checkpoint", "save_checkpoint"]

log = logging.getLogger(__name__)
CKPT_FORMAT = "astbench-pretrain"
CKPT_VERSION = 1


def save_checkpoint(path: Path, raw: nn.Module, optimizer, schedule: Schedule, cfg: PretrainConfig,
                    step: int, world: int, position: tuple[int, int], num_files: int, skipped: dict,
                    final: bool) -> None:
    """``last.ckpt`` (everything to resume) and, when ``final``, ``upstream.pt`` (the encoder as an upstream),
    each atomically. A run stopped by a signal leaves no ``upstream.pt``: one there means the run reached its
    stop (``max_steps``, or ``stop_at_step`` when given; ``extra.pretrain_step`` says which step)."""
    if final:
        save_upstream(raw.to_upstream(), path.parent / "upstream.pt",
                      extra={"pretrain_step": step, "objective": dict(cfg.objective),
                             "skipped_files": len(skipped)})
    torch_save_atomic({
        "format": CKPT_FORMAT, "version": CKPT_VERSION, "step": step, "world_size": world,
        "objective": raw.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
        "rng": rng_state(), "mask_generator": "seeded from (seed, step, micro-batch), see pretrain.engine",
        "sampler": (*position, step * cfg.batch_size), "num_files": num_files, "skipped_files": dict(skipped),
        "config": config_to_dict(cfg),
    }, path)


def load_resume_checkpoint(path: Path, cfg: PretrainConfig, world: int, num_files: int,
                           trust_checkpoint: bool = False) -> dict:
    """``last.ckpt`` of the run ``cfg`` resumes, checked against it.

    Nothing in the file runs unless ``trust_checkpoint`` (``upstream.safe_load``): a run folder can come from
    anywhere. Another micro-batch count or file count is warned about (masks, or the data order, change).

    Raises:
        ConfigError: an unreadable or refused file, not a pretraining checkpoint, or another objective, batch
            size or seed than the checkpoint's.
    """
    try:
        ckpt = load_checkpoint_file(path, trust_checkpoint, what="resume checkpoint")
    except CheckpointError as err:
        raise ConfigError(str(err)) from None
    if ckpt.get("format") != CKPT_FORMAT:
        raise ConfigError("last.ckpt is not a pretraining checkpoint of this project")
    old = ckpt["config"]
    for key in ("objective", "batch_size", "seed"):
        new = config_to_dict(getattr(cfg, key))
        if old[key] != new:
            raise ConfigError(f"cannot resume: {key} was {old[key]!r} in the checkpoint but is {new!r} now")
    if old["grad_accum"] * ckpt["world_size"] != cfg.grad_accum * world:
        log.warning("resuming with %d micro-batches per step instead of %d: masks will differ from an "
                    "uninterrupted run", cfg.grad_accum * world, old["grad_accum"] * ckpt["world_size"])
    if ckpt["num_files"] != num_files:
        log.warning("the data now has %d files, the checkpoint saw %d: the data order changes from here",
                    num_files, ckpt["num_files"])
    return ckpt
