"""Downstream heads: plain modules that return logits; loss and metric belong to the task spec.

* :class:`UtteranceHead`: s3prl's SUPERB utterance-level head for KS1/SID/ER (``downstream/model.py``):
  ``projector = Linear(upstream_dim, 256)`` -> ``MeanPooling`` over valid frames -> ``Linear(256, C)``
  (``UtteranceLevel`` with no hidden layer).
* :class:`PSLAHead`: the SSAST/AST fine-tuning head (``ast_models.py`` ``mlp_head``):
  ``LayerNorm(D) -> Linear(D, C)`` on the mean of the patch tokens (``task=ft_avgtok``).
"""
from __future__ import annotations

import torch
from torch import nn


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over the first ``lengths[b]`` frames of each row.

    Args:
        x: (B, T, H) features.
        lengths: (B,) valid frames per row.
    Returns:
        (B, H).
    """
    valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]  # (B, T)
    w = valid.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1).clamp(min=1)


class UtteranceHead(nn.Module):
    """s3prl projector + MeanPooling + linear post-net.

    Args:
        in_dim: upstream frame feature width H (``upstream.hidden_size``).
        num_classes: C.
        proj_dim: projector width (s3prl ``projector_dim: 256``).
    """

    def __init__(self, in_dim: int, num_classes: int, proj_dim: int = 256):
        super().__init__()
        self.projector = nn.Linear(in_dim, proj_dim)
        self.classifier = nn.Linear(proj_dim, num_classes)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, H) features, (B,) valid lengths -> (B, C) logits; padded frames never contribute."""
        return self.classifier(masked_mean(self.projector(features), lengths))


class PSLAHead(nn.Module):
    """SSAST ``mlp_head``: ``LayerNorm(dim, eps=1e-5) -> Linear(dim, C)`` over the mean patch token.

    Args:
        dim: token width D (``upstream.clip_size``).
        num_classes: C.
    """

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """(B, D) mean of patch tokens (the upstream's ``clip`` output) -> (B, C) logits."""
        return self.linear(self.norm(clip))
