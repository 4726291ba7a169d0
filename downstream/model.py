"""The model a downstream run trains: upstream -> Featurizer -> UtteranceHead, or upstream clip -> PSLAHead.

One upstream API serves both modes: ``upstream(wavs)`` gives hidden states, lengths and the clip feature.
Frozen: upstream ``.eval()`` under ``torch.no_grad()``, only Featurizer + head learn, and the features may
come from ``downstream.cache``. Fine-tune (``-f``): upstream ``.train()``, its parameters learn with the
head's, and the PSLA recipes' SpecAugment / noise go through the upstream's ``set_input_augment`` hook.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from upstream.interface import run_upstream

from .augment import AugmentConfig, attach
from .cache import FeatureBatch, select_features
from .config import HeadConfig
from .featurizer import Featurizer
from .heads import PSLAHead, UtteranceHead


class DownstreamModel(nn.Module):
    """upstream -> Featurizer -> UtteranceHead, or upstream clip feature -> PSLAHead. Returns logits.

    Takes a list of waveforms, or a :class:`~downstream.cache.FeatureBatch` of cached frozen features.
    """

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

    @property
    def selection(self) -> str:
        """The upstream output the head reads (the feature cache stores it)."""
        return "clip" if self.kind == "psla" else "hidden_states" if self.featurizer else "last_hidden_state"

    @property
    def layers(self) -> list[int] | None:
        """The hidden states the head reads, asked of the upstream (``run_upstream``) so that no other is
        kept: all for the weighted sum, ``[k]`` for ``-l k``, none for ``last_hidden_state`` and the clip."""
        return self.featurizer.layers if self.featurizer is not None else []

    def augment_inputs(self, cfg: AugmentConfig, generator: torch.Generator) -> None:
        """SpecAugment / noise on the upstream's inputs (training mode only, ``-f`` only), through its
        ``set_input_augment`` hook; an upstream without one is fine-tuned without them (warned)."""
        if not self.finetune:
            raise ValueError("augment.* applies to -f runs only: a frozen probe (and its feature cache) sees "
                             "the clips unaugmented, as s3prl's")
        attach(self.upstream, cfg, generator)

    def train(self, mode: bool = True) -> DownstreamModel:
        super().train(mode)
        if not self.finetune:
            self.upstream.eval()  # frozen probe: no dropout, no norm-statistic updates
        return self

    def forward(self, inputs: list[torch.Tensor] | FeatureBatch) -> torch.Tensor:
        if isinstance(inputs, FeatureBatch):
            feats, lengths = self._cached(inputs)  # (B, T, L, H), (B,)
            if self.kind == "psla":
                return self.head(feats[:, 0, 0])
            hidden = list(feats.unbind(2))
            return self.head(self.featurizer(hidden) if self.featurizer is not None else hidden[0], lengths)
        with torch.set_grad_enabled(self.finetune and self.training and torch.is_grad_enabled()):
            out = run_upstream(self.upstream, inputs, self.layers)
        if self.kind == "psla":
            return self.head(out["clip"])
        if self.featurizer is not None:
            return self.head(self.featurizer(out["hidden_states"]), out["lengths"])
        return self.head(out["last_hidden_state"], out["lengths"])

    def _cached(self, batch: FeatureBatch) -> tuple[torch.Tensor, torch.Tensor]:
        feats, lengths = batch.feats.float(), batch.lengths.clone()
        if batch.live:  # random training crops: through the frozen upstream now
            rows = torch.tensor([i for i, _ in batch.live], device=feats.device)
            with torch.no_grad():
                # the cache holds every hidden state for 'hidden_states', so live crops return them all too
                out = run_upstream(self.upstream, [w for _, w in batch.live],
                                   None if self.selection == "hidden_states" else [])
                live, live_lens = select_features(out, self.selection)
            if feats.shape[2:] != live.shape[2:]:  # the batch had no cached clip to give the shape
                feats = feats.new_zeros(*feats.shape[:2], *live.shape[2:])
            T = max(feats.shape[1], live.shape[1])
            feats = F.pad(feats, (0, 0, 0, 0, 0, T - feats.shape[1]))
            feats[rows] = F.pad(live.float(), (0, 0, 0, 0, 0, T - live.shape[1]))
            lengths[rows] = live_lens.to(lengths.dtype)
        return feats, lengths

    def trainable_state(self) -> dict:
        """Weights the run learned: head + featurizer, plus the upstream when fine-tuned."""
        return {k: v for k, v in self.state_dict().items() if self.finetune or not k.startswith("upstream.")}
