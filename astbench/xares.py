"""An X-ARES audio encoder (``xares.audio_encoder_checker.check_audio_encoder``) over any registered upstream.

    from astbench.xares import ASTBenchEncoder
    encoder = ASTBenchEncoder("ssast_patch_400")                # checkpoint looked up as upstream.load does
    encoder = ASTBenchEncoder("asit_base", ckpt="asit_base.pth", sampling_rate=16000)
    frames = encoder(audio)                                            # (B, S) -> (B, T, output_dim)

Attributes X-ARES reads: ``sampling_rate`` (the input rate; the upstream's own unless given, e.g. 16 kHz for
ASiT, which runs at 32 kHz and then resamples inside), ``output_dim`` (H of the frame features), and
``hop_size_in_ms`` (``get_downsample_rates()`` in ms: the frames are on that grid, SSAST's included; see
:mod:`astbench.framing`). Audio of any length, 10 minutes and more, is encoded in pieces of about
``chunk_secs`` seconds, so memory stays that of one piece.

``encoder(audio)`` returns the frames (X-ARES 0.1); ``encoder(audio, attention_mask)`` returns
``(frames, frame_mask)`` (later X-ARES): ``attention_mask`` (B, S) marks real samples with 1 (None: all real),
each clip is then encoded at its own length, and ``frame_mask`` (B, T) bool marks its frames.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from upstream.frontend import resample

from .framing import frame_features, frame_grid

__all__ = ["ASTBenchEncoder"]

_NO_MASK = object()  # forward(audio) alone: the X-ARES 0.1 call, answered with the frames alone


class ASTBenchEncoder(nn.Module):
    """X-ARES encoder: waveforms (B, S) at ``sampling_rate`` -> frame features (B, T, ``output_dim``).

    Args:
        upstream: a registered upstream name, or an already built upstream module.
        ckpt: its checkpoint (``upstream.load``); None = the default file, or random weights for ``*_mini``.
        layer: ``hidden_states[layer]`` instead of ``last_hidden_state``.
        sampling_rate: input rate in Hz; default the upstream's.
        chunk_secs: pieces long audio is encoded in.
        overrides: ``upstream.load`` overrides.
    """

    def __init__(self, upstream: str | nn.Module = "ssast_patch_400", ckpt: str | None = None,
                 layer: int | None = None, sampling_rate: int | None = None, chunk_secs: float = 10.0,
                 **overrides):
        super().__init__()
        if isinstance(upstream, str):
            import upstream as upstreams

            upstream = upstreams.load(upstream, ckpt, **overrides)
        self.upstream = upstream.eval()
        self.grid = frame_grid(upstream, chunk_secs)
        self.layer = layer
        self.sampling_rate = int(sampling_rate or upstream.sample_rate)
        self.output_dim = int(upstream.hidden_size)
        self.hop_size_in_ms = self.grid.hop_ms

    @property
    def device(self) -> torch.device:
        return next(self.upstream.parameters()).device

    def _encode(self, audio: torch.Tensor) -> torch.Tensor:
        wavs = resample(audio.to(self.device, torch.float32), self.sampling_rate, self.upstream.sample_rate)
        return frame_features(self.upstream, wavs, self.grid, self.layer)

    @torch.no_grad()
    def forward(self, audio: torch.Tensor, attention_mask=_NO_MASK):
        """
        Args:
            audio: (B, S) or (S,) float waveforms at ``sampling_rate``.
            attention_mask: optional (B, S), 1 for real samples (later X-ARES API).
        Returns:
            (B, T, output_dim) float32; with ``attention_mask`` given, also the (B, T) bool frame mask.
        """
        if not isinstance(audio, torch.Tensor) or audio.ndim not in (1, 2) or audio.shape[-1] == 0:
            shape = tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__
            raise ValueError(f"audio must be a non-empty (B, S) or (S,) waveform tensor, got {shape}")
        audio = audio[None] if audio.ndim == 1 else audio
        if attention_mask is _NO_MASK:
            return self._encode(audio)
        if attention_mask is None:
            feats = self._encode(audio)
            return feats, torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)
        lengths = attention_mask.reshape(len(audio), -1).bool().sum(1).tolist()
        clips = [self._encode(audio[i:i + 1, :max(1, n)])[0] for i, n in enumerate(lengths)]
        T = max(c.shape[0] for c in clips)
        feats = torch.stack([F.pad(c, (0, 0, 0, T - c.shape[0])) for c in clips])
        mask = torch.arange(T, device=feats.device)[None] < torch.tensor([c.shape[0] for c in clips],
                                                                         device=feats.device)[:, None]
        return feats, mask
