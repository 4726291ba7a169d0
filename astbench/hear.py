"""The HEAR 2021 API (hear-eval-kit, hear-validator) for every registered upstream.

    hear-validator astbench.hear --model ssast_patch_mini                     # a registered name
    hear-validator astbench.hear --model ssast_patch_400=/ckpts/SSAST-Base-Patch-400.pth
    ASTBENCH_HEAR_UPSTREAM=asit_base hear-validator astbench.hear --model /ckpts/asit_base.pth

``load_model(model_file_path)`` chooses the upstream and its checkpoint from one string, since HEAR's tools
pass nothing else: a registered upstream name (its checkpoint looked up as ``upstream.load`` does, in
``$ASTBENCH_CHECKPOINTS``; random weights for the ``*_mini`` test models), ``NAME=PATH``, or a checkpoint
``PATH`` with the name in ``$ASTBENCH_HEAR_UPSTREAM`` (or the ``upstream=`` keyword, which hear-eval-kit's
``--model-options '{"upstream": "ssast_patch_400"}'`` passes). More keywords: ``layer`` (timestamp embeddings
from ``hidden_states[layer]`` instead of ``last_hidden_state``), ``sample_rate`` (the input rate) and the
upstream's own overrides.

* ``get_timestamp_embeddings(audio, model)``: ``(n_sounds, n_timestamps, H)`` frame features and the time of
  each frame's centre in milliseconds; the frames lie on one grid ``hop = get_downsample_rates()`` apart, and
  SSAST's 1 s windows advance by the columns they hold so that the times are real (:mod:`astbench.framing`).
  A frame is kept when its centre lies inside the clip.
* ``get_scene_embeddings(audio, model)``: ``(n_sounds, D)``, the upstream's ``clip`` feature (each paper's
  pooling over the whole clip).
* ``model.sample_rate``: the input rate, one of HEAR's (16, 22.05, 44.1, 48 kHz). ASiT runs at 32 kHz, which
  HEAR does not offer: its input is 48 kHz by default (``sample_rate=16000`` for 16 kHz) and resampled inside
  (soxr, HQ). ``model.scene_embedding_size`` = D, ``model.timestamp_embedding_size`` = H.

Clips are processed as a batch, and a batch gives exactly what each clip gives alone (the clips of a HEAR
batch have one length, so nothing is padded).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from upstream.frontend import resample
from upstream.interface import run_upstream

from .framing import FrameGrid, frame_features, frame_grid

__all__ = ["HEARModel", "load_model", "get_scene_embeddings", "get_timestamp_embeddings", "UPSTREAM_ENV"]

UPSTREAM_ENV = "ASTBENCH_HEAR_UPSTREAM"
HEAR_SAMPLE_RATES = (16000, 22050, 44100, 48000)


class HEARModel(nn.Module):
    """An upstream with HEAR's attributes; what :func:`load_model` returns.

    Attributes:
        sample_rate: input rate in Hz (a HEAR rate); resampled to ``upstream.sample_rate`` inside.
        scene_embedding_size: D, the width of the upstream's clip feature.
        timestamp_embedding_size: H, the width of its frame features.
    """

    def __init__(self, up: nn.Module, layer: int | None = None, sample_rate: int | None = None,
                 chunk_secs: float = 10.0):
        super().__init__()
        native = int(up.sample_rate)
        default = native if native in HEAR_SAMPLE_RATES else 48000
        rate = int(sample_rate) if sample_rate is not None else default
        if rate not in HEAR_SAMPLE_RATES:
            raise ValueError(f"sample_rate={rate}: HEAR feeds audio at {list(HEAR_SAMPLE_RATES)} Hz only")
        if layer is not None and not -up.num_layers <= layer < up.num_layers:
            raise ValueError(f"layer={layer}: {up.name} has hidden_states 0..{up.num_layers - 1}")
        self.upstream = up.eval()
        self.layer = layer
        self.sample_rate = rate
        self.grid: FrameGrid = frame_grid(up, chunk_secs)
        self.scene_embedding_size = int(up.clip_size)
        self.timestamp_embedding_size = int(up.hidden_size)

    def model_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(n_sounds, n_samples) at ``sample_rate`` -> float32 at the upstream's rate, on its device."""
        if not isinstance(audio, torch.Tensor) or audio.ndim != 2:
            shape = tuple(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__
            raise ValueError(f"audio input tensor must be 2D (n_sounds, num_samples), got {shape}")
        if audio.shape[0] == 0 or audio.shape[1] == 0:
            raise ValueError(f"audio input tensor is empty: shape {tuple(audio.shape)}")
        device = next(self.upstream.parameters()).device
        audio = audio.to(device=device, dtype=torch.float32)
        return resample(audio, self.sample_rate, self.upstream.sample_rate)


def _parse_model_path(model_file_path: str, upstream: str | None) -> tuple[str, str | None]:
    """-> (upstream name, checkpoint or None) from ``NAME``, ``NAME=PATH`` or ``PATH`` (module docstring)."""
    from upstream import list_upstreams

    names = set(list_upstreams())
    spec = str(model_file_path or "")
    if "=" in spec and spec.split("=", 1)[0] in names:
        name, ckpt = spec.split("=", 1)
        return name, ckpt
    if spec in names:
        return spec, None
    name = upstream or os.environ.get(UPSTREAM_ENV)
    if not name:
        what = f"{spec!r} is not a registered upstream" if spec else "no model_file_path given"
        raise ValueError(f"load_model: {what}; pass a registered name (e.g. 'ssast_patch_400'), "
                         f"'NAME=CHECKPOINT', or a checkpoint path with the upstream in ${UPSTREAM_ENV} or "
                         f"upstream=. "
                         f"Registered: {', '.join(sorted(names))}")
    if name not in names:
        raise ValueError(f"load_model: upstream {name!r} (from upstream= or ${UPSTREAM_ENV}) is not "
                         f"registered; registered: {', '.join(sorted(names))}")
    return name, spec or None


def load_model(model_file_path: str = "", upstream: str | None = None, layer: int | None = None,
               sample_rate: int | None = None, chunk_secs: float = 10.0, **overrides) -> HEARModel:
    """HEAR's ``load_model``: see the module docstring for how ``model_file_path`` names the upstream.

    Args:
        model_file_path: ``NAME``, ``NAME=CHECKPOINT`` or ``CHECKPOINT``.
        upstream: the registered name when ``model_file_path`` is only a checkpoint.
        layer: timestamp embeddings from ``hidden_states[layer]``; None = ``last_hidden_state``.
        sample_rate: input rate (default: the upstream's when HEAR has it, else 48 kHz).
        chunk_secs: long audio is encoded in pieces of about this length (:mod:`astbench.framing`).
        overrides: passed to ``upstream.load`` (e.g. ``backbone="student"`` for ASiT).
    """
    import upstream as upstreams

    name, ckpt = _parse_model_path(model_file_path, upstream)
    return HEARModel(upstreams.load(name, ckpt, **overrides), layer, sample_rate, chunk_secs)


@torch.no_grad()
def get_timestamp_embeddings(audio: torch.Tensor, model: HEARModel) -> tuple[torch.Tensor, torch.Tensor]:
    """HEAR's frame embeddings.

    Args:
        audio: (n_sounds, n_samples) in [-1, 1] at ``model.sample_rate``.
    Returns:
        embeddings (n_sounds, n_timestamps, ``timestamp_embedding_size``) float32 and timestamps
        (n_sounds, n_timestamps) float32: each frame's centre in ms from the clip start, on audio's device.
    """
    wavs = model.model_audio(audio)
    emb = frame_features(model.upstream, wavs, model.grid, model.layer)
    times = model.grid.centres_ms(emb.shape[1]).to(emb.device)
    return emb, times.expand(emb.shape[0], -1).contiguous()


@torch.no_grad()
def get_scene_embeddings(audio: torch.Tensor, model: HEARModel) -> torch.Tensor:
    """HEAR's clip embeddings: (n_sounds, ``scene_embedding_size``) float32, the upstream's ``clip``."""
    wavs = model.model_audio(audio)
    return run_upstream(model.upstream, list(wavs), [])["clip"].float()  # no hidden state kept
