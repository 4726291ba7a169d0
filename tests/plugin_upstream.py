"""A user's own upstream, plugged in as ``tests.plugin_upstream:build`` (and two broken variants)."""
from __future__ import annotations

import math

import torch
from torch import nn


class FrameUpstream(nn.Module):
    """Non-overlapping 160-sample frames -> Linear -> 2 'layers'; honours the upstream contract."""

    sample_rate = 16000
    hidden_size = 8
    clip_size = 8
    num_layers = 2

    def __init__(self, broken: str = ""):
        super().__init__()
        self.proj = nn.Linear(160, 8)
        self.layer = nn.Linear(8, 8)
        self.broken = broken

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        return 160

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        T = math.ceil(max(w.numel() for w in wavs) / 160)
        x = torch.zeros(len(wavs), T * 160, device=self.proj.weight.device)
        for i, w in enumerate(wavs):
            x[i, : w.numel()] = w
        h1 = self.proj(x.view(len(wavs), T, 160))  # (B, T, 8)
        h2 = self.layer(h1)
        lengths = torch.tensor([math.ceil(w.numel() / 160) for w in wavs], device=x.device)
        if self.broken == "lengths":
            lengths = torch.full_like(lengths, T + 5)
        if self.broken == "nan":
            h2 = h2 * float("nan")
        valid = (torch.arange(T, device=x.device)[None] < lengths[:, None]).float()[..., None]
        clip = (h2 * valid).sum(1) / valid.sum(1).clamp(min=1)
        return {"hidden_states": [h1, h2], "last_hidden_state": h2, "clip": clip, "lengths": lengths}


def build(**overrides) -> FrameUpstream:
    return FrameUpstream()


def build_wrong_lengths(**overrides) -> FrameUpstream:
    return FrameUpstream("lengths")


def build_nan(**overrides) -> FrameUpstream:
    return FrameUpstream("nan")
