"""What every pretraining objective shares: the trainer-facing interface and config checking.

An objective wraps a shared :class:`~upstream.encoder.ASTEncoder` and returns ``(loss, logs)``
(torchaudio's ``HuBERTPretrainModel`` and dinov2's ``SSLMetaArch`` are the pattern). The trainer in
``pretrain/engine.py`` knows nothing else about the method.
"""
from __future__ import annotations

from dataclasses import fields

import torch
from torch import nn

from .config import UpstreamConfig
from .encoder import EncoderConfig
from .frontend import FbankConfig
from .interface import Upstream
from .registry import refuse_unknown


class Objective(nn.Module):
    """Base class: subclasses set ``family``, ``num_views``, ``frontend``, ``crop_secs``, ``encoder`` and
    implement ``forward(fbank, num_frames, generator) -> (loss, logs)``, ``upstream_config()`` and
    ``step_flops(num_frames)`` (the speed benchmark's analytic FLOPs).

    ``forward`` draws its masks (or corrupted views) from ``generator`` with the pure functions of
    :mod:`upstream.masking`; each family also takes them ready-made through one keyword argument (SSAST
    ``masks``, MAE-AST ``mask``, ASiT ``corruption``), which is how the official objectives are replayed on
    their golden fixtures (``tests/official_objectives.py``)."""

    family: str = ""
    num_views: int = 1
    frontend: FbankConfig
    crop_secs: float | None = None
    encoder: nn.Module

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after each optimizer step (EMA teachers, schedules)."""

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on every trainable parameter: what SSAST's ``torch.optim.Adam(trainables,
        weight_decay=5e-7)`` (``traintest_mask.py``) and MAE-AST's fairseq Adam (``weight_decay`` 0.01 on all
        parameters) do. ASiT overrides this with DINO's groups (:func:`dino_param_groups`)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "weight_decay": weight_decay}]

    def upstream_config(self) -> UpstreamConfig:
        raise NotImplementedError

    def step_flops(self, num_frames: int) -> float:
        """Analytic FLOPs of one training step per clip of ``num_frames`` fbank frames (see
        :func:`block_train_flops`)."""
        raise NotImplementedError(f"{type(self).__name__} has no FLOP formula")

    def to_upstream(self) -> Upstream:
        """The pretrained encoder as an upstream (heads dropped), ready for ``save_upstream``."""
        up = Upstream(self.upstream_config())
        up.encoder.load_state_dict(self.encoder.state_dict())
        return up


def dino_param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """DINO's ``utils.get_params_groups`` (ASiT ``main_ASiT.py``): no decay for biases and 1-D parameters
    (norms), decay for everything else, tokens and position tables included."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def info_nce(pred: torch.Tensor, target: torch.Tensor, over: str) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE over the masked patches of each clip, the other masked patches being the negatives.

    The two papers normalise in opposite directions, and the two give different losses:

    * ``over='predictions'``: SSAST ``mpc`` (``ast_models.py``): ``logits = target @ pred^T`` (row = target),
      log-softmax along the last dim, i.e. over the predictions, mean of the diagonal (issue #13 of
      YuanGongND/ssast: this differs from the paper's equation 1 and is kept for reproducibility). The
      accuracy is SSAST's: per prediction (column), the argmax over targets of the *row-softmaxed* matrix.
    * ``over='targets'``: MAE-AST ``mae_ast_criterion.py`` l.66-68: ``logits = pred @ target^T`` (row =
      prediction), log-softmax over the targets. The official criterion logs no accuracy; here it counts the
      predictions whose best-scoring target is their own.

    Args:
        pred, target: (B, M, d).
        over: ``'predictions'`` (SSAST) or ``'targets'`` (MAE-AST).
    Returns:
        (loss, accuracy), 0-d.
    """
    if over not in ("predictions", "targets"):
        raise ValueError(f"info_nce over must be 'predictions' or 'targets', got {over!r}")
    pred, target = pred.float(), target.float()
    rows, cols = (target, pred) if over == "predictions" else (pred, target)
    logits = torch.einsum("bmd,bnd->bmn", rows, cols)  # (B, M, M)
    log_probs = torch.log_softmax(logits, dim=-1)
    loss = -torch.diagonal(log_probs, dim1=1, dim2=2).mean()
    ids = torch.arange(logits.shape[1], device=logits.device)
    with torch.no_grad():
        # SSAST: argmax over dim 0 of each clip's softmaxed matrix (torch.argmax(softmax(total), dim=0))
        best = log_probs.argmax(dim=1) if over == "predictions" else logits.argmax(dim=-1)  # (B, M)
        acc = (best == ids).float().mean()
    return loss, acc


def override_encoder(cfg: EncoderConfig, overrides: dict, family: str) -> EncoderConfig:
    """``cfg`` with an objective's ``encoder`` overrides (field names of :class:`EncoderConfig`, e.g. a depth
    read from a checkpoint, or dropouts set to 0), unknown names refused by name."""
    if not isinstance(overrides, dict):
        raise ValueError(f"{family} objective key 'encoder' must be a mapping of EncoderConfig fields, "
                         f"got {overrides!r}")
    refuse_unknown(overrides, {f.name for f in fields(EncoderConfig)}, f"{family} objective encoder key")
    return EncoderConfig.from_dict({**cfg.to_dict(), **overrides})


# ------------------------------------------------------------------------------------------ FLOPs
# Matrix products only (2 per multiply-add). A block over L tokens of width D with MLP ratio r does
# 2 (4 + 2r) D^2 L in its projections and MLP and 4 L^2 D in attention (QK^T and AV), forward. A trained
# module counts 3x its forward (backward = 2x forward); a module run without gradient (ASiT's teacher) 1x.
def block_train_flops(tokens: int, dim: int, depth: int, mlp_ratio: float, train: bool = True) -> float:
    """FLOPs of ``depth`` transformer blocks over one sequence of ``tokens``."""
    forward = depth * (2 * (4 + 2 * mlp_ratio) * dim**2 * tokens + 4 * tokens**2 * dim)
    return forward * (3 if train else 1)


def linear_flops(tokens: int, fan_in: int, fan_out: int, train: bool = True) -> float:
    """FLOPs of a ``fan_in -> fan_out`` linear layer over ``tokens`` tokens."""
    return 2 * tokens * fan_in * fan_out * (3 if train else 1)
