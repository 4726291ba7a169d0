"""s3prl's Featurizer: a softmax-weighted sum of an upstream's hidden states, or one chosen layer.

Follows ``s3prl/upstream/interfaces.py`` ``Featurizer`` (s3prl 0.4.18): learnable ``weights = zeros(L)``,
``softmax`` over layers, then the weighted sum; no per-layer normalisation (``--upstream_feature_normalize``
is off by default there). ``layer=k`` is s3prl's ``-l k``: the k-th hidden state alone, nothing learned.
"""
from __future__ import annotations

import torch
from torch import nn


class Featurizer(nn.Module):
    """Combine ``hidden_states`` (list of L tensors ``(B, T, H)``) into one ``(B, T, H)`` feature.

    Args:
        num_layers: L, the number of hidden states the upstream returns.
        layer: use only hidden state ``layer`` (0-based, negative counts from the end); None = weighted sum.
    """

    def __init__(self, num_layers: int, layer: int | None = None):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if layer is not None and not -num_layers <= layer < num_layers:
            raise ValueError(f"layer {layer} is out of range for an upstream with {num_layers} hidden states")
        self.num_layers = num_layers
        self.layer = None if layer is None else layer % num_layers
        # zeros -> uniform softmax at init, as s3prl
        self.weights = nn.Parameter(torch.zeros(num_layers)) if layer is None else None

    @property
    def layers(self) -> list[int] | None:
        """The hidden states this featurizer reads, for ``upstream.interface.run_upstream``: None = all
        (the weighted sum), else ``[layer]``."""
        return None if self.layer is None else [self.layer]

    def layer_weights(self) -> torch.Tensor:
        """``(L,)`` weights that sum to 1 (one-hot for a single layer)."""
        if self.weights is None:
            return nn.functional.one_hot(torch.tensor(self.layer), self.num_layers).float()
        return self.weights.softmax(-1)

    def forward(self, hidden_states: list[torch.Tensor]) -> torch.Tensor:
        """Every hidden state (L of them), or, for one chosen layer, just that one (what an upstream asked
        for :attr:`layers` returns)."""
        if self.weights is None and len(hidden_states) == 1:
            return hidden_states[0]
        if len(hidden_states) != self.num_layers:
            raise ValueError(f"Featurizer built for {self.num_layers} hidden states got {len(hidden_states)}")
        if self.weights is None:
            return hidden_states[self.layer]
        stacked = torch.stack(hidden_states, 0)  # (L, B, T, H)
        w = self.weights.softmax(-1).to(stacked.dtype)
        return (w[:, None, None, None] * stacked).sum(0)  # (B, T, H)
