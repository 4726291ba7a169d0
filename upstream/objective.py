"""What every pretraining objective shares: the trainer-facing interface and config checking.

An objective wraps a shared :class:`~upstream.encoder.ASTEncoder` and returns ``(loss, logs)``
(torchaudio's ``HuBERTPretrainModel`` and dinov2's ``SSLMetaArch`` are the pattern). The trainer in
``upstream/pretrain.py`` knows nothing else about the method.
"""
from __future__ import annotations

import difflib
from dataclasses import fields

import torch
from torch import nn

from .frontend import FbankConfig
from .interface import Upstream, UpstreamConfig


def parse_objective_config(cls, cfg: dict, family: str):
    """Build dataclass ``cls`` from ``cfg`` (minus ``family``), naming any unknown key."""
    cfg = {k: v for k, v in cfg.items() if k != "family"}
    known = {f.name for f in fields(cls)}
    for key in cfg:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown {family} objective key {key!r}{hint}; known: {sorted(known)}")
    return cls(**cfg)


class Objective(nn.Module):
    """Base class: subclasses set ``family``, ``num_views``, ``frontend``, ``crop_secs``, ``encoder`` and
    implement ``forward(fbank, num_frames, generator) -> (loss, logs)`` and ``upstream_config()``."""

    family: str = ""
    num_views: int = 1
    frontend: FbankConfig
    crop_secs: float | None = None
    encoder: nn.Module

    def after_step(self, step: int, total_steps: int) -> None:
        """Called after each optimizer step (EMA teachers, schedules)."""

    def param_groups(self, weight_decay: float) -> list[dict]:
        """No weight decay on biases, norms, tokens and position tables (1-D or token-table parameters)."""
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(("tokens", "pos_embed", "mask_embed", "mask_emb")) else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def upstream_config(self) -> UpstreamConfig:
        raise NotImplementedError

    def to_upstream(self) -> Upstream:
        """The pretrained encoder as an upstream (heads dropped), ready for ``save_upstream``."""
        up = Upstream(self.upstream_config())
        up.encoder.load_state_dict(self.encoder.state_dict())
        return up


def info_nce(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE over the masked patches of each clip, the other masked patches being the negatives.

    As SSAST's ``mpc`` computes it (and MAE-AST copies): ``logits = target @ pred^T`` per clip, log-softmax
    along the last dim, mean of the diagonal (issue #13 of YuanGongND/ssast: it differs from the paper's
    equation 1 and is kept for reproducibility).

    Args:
        pred, target: (B, M, d).
    Returns:
        (loss, accuracy): accuracy counts predictions whose best-matching target is their own.
    """
    logits = torch.einsum("bmd,bnd->bmn", target.float(), pred.float())  # (B, M, M)
    loss = -torch.diagonal(torch.log_softmax(logits, dim=-1), dim1=1, dim2=2).mean()
    ids = torch.arange(logits.shape[1], device=logits.device)
    acc = (logits.argmax(dim=1) == ids).float().mean()  # official: argmax over dim 0 of each clip's matrix
    return loss, acc
