"""Output frames on a time grid, for the APIs that need times (HEAR timestamps, X-ARES hop sizes) and long
audio.

An upstream's frame ``m`` is one column of patches: fbank frames ``m * tstride .. m * tstride + tshape - 1``,
which read samples ``m * hop`` to ``m * hop + (tshape - 1) * shift + win`` (``hop = tstride * shift`` =
``get_downsample_rates()``). Its centre is therefore ``m * hop + ((tshape - 1) * shift + win) / 2`` samples:
87.5 ms + 100 ms * m for SSAST patches at 16 kHz, 17.5 ms + 10 ms * m for SSAST frames, 87.5 ms + 160 ms * m
for MAE-AST and ASiT patches.

Those centres are real only if the frames follow one grid. MAE-AST (whole clip) and ASiT (592-frame windows
of the clip's own fbank) do. s3prl's SSAST windowing does not: each 1 s window gives 9 patch columns (10 for
frames minus padding) while ``get_downsample_rates`` says 10 per second, so frame ``m`` of ``upstream(wavs)``
drifts from ``m * hop`` by 100 ms per second of audio. :func:`frame_features` therefore cuts SSAST's input
into windows that advance by the columns a window holds (0.9 s of 1 s windows for patches, 0.97 s for
frames); each window is exactly an s3prl window (same fbank, same model input) and the columns tile the clip
on the grid above.

Long audio is cut the same way into pieces of a whole number of frames (``chunk_secs``; each piece reads the
samples its last frame needs past its end), encoded in batches, and the frames concatenated: for SSAST and
ASiT a piece is a whole number of windows, so only the per-clip waveform mean removal differs from encoding
the clip at once; MAE-AST's attention sees one piece at a time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from upstream.interface import run_upstream
from upstream.kaldi import num_frames as fbank_frames

__all__ = ["FrameGrid", "frame_grid", "frame_features"]


@dataclass(frozen=True)
class FrameGrid:
    """Where an upstream's output frames lie in time and how long audio is cut into pieces along them.

    All quantities are in samples at the upstream's ``sample_rate``.
    """

    sample_rate: int
    hop: int  # between consecutive frames (= get_downsample_rates)
    first_centre: float  # frame 0's centre
    need: int  # audio a frame reads before the upstream gives it: its first fbank frame, or all (MAE-AST)
    piece: int  # audio per piece, a whole number of frames
    context: int  # read past a piece's end, so that its last frame sees the audio it covers

    @property
    def frames_per_piece(self) -> int:
        return self.piece // self.hop

    @property
    def hop_ms(self) -> float:
        return 1000.0 * self.hop / self.sample_rate

    def num_frames(self, num_samples: int) -> int:
        """Frames of a clip of ``num_samples``: those whose centre lies in the clip and that the upstream
        gives (its windows are zero-padded, so a frame needs its first fbank frame; MAE-AST's whole-clip
        patches need all of theirs); at least one (a clip shorter than that still gets the frame the upstream
        gives)."""
        room = num_samples - max(self.first_centre, self.need)
        return max(1, math.floor(room / self.hop) + 1) if room >= 0 else 1

    def centres_ms(self, count: int) -> torch.Tensor:
        """(count,) float32 centres of frames ``0..count-1`` in milliseconds (in float64 first: no drift)."""
        m = torch.arange(count, dtype=torch.float64)
        return ((self.first_centre + m * self.hop) * 1000.0 / self.sample_rate).float()


def frame_grid(up: nn.Module, chunk_secs: float = 10.0) -> FrameGrid:
    """The grid of ``up`` (an :class:`upstream.Upstream`), with pieces of about ``chunk_secs`` seconds.

    Raises:
        ValueError: ``up`` is not one of this project's upstreams, or its windowing gives no time grid.
    """
    cfg = getattr(up, "cfg", None)
    if cfg is None or not hasattr(cfg, "encoder"):
        raise ValueError(f"{type(up).__name__} is not an astbench Upstream (no .cfg): its frames' times are "
                         f"unknown; use a registered upstream")
    if not chunk_secs > 0:
        raise ValueError(f"chunk_secs must be > 0 seconds, got {chunk_secs}")
    enc, fr, sr = cfg.encoder, cfg.frontend, int(up.sample_rate)
    # samples per fbank window and shift, truncated as kaldi does
    win, shift = int(sr * fr.frame_length_ms * 0.001), int(sr * fr.frame_shift_ms * 0.001)
    hop = int(up.get_downsample_rates("hidden_states"))
    if hop != shift * enc.tstride:
        raise ValueError(f"{up.name}: downsample rate {hop} != frame shift {shift} x tstride {enc.tstride}")
    first_centre = ((enc.tshape - 1) * shift + win) / 2
    per_chunk = max(1, int(chunk_secs * sr))
    need = win  # windowed upstreams zero-pad their windows: a patch needs one real fbank frame
    if cfg.window_frames is None:  # whole clip (MAE-AST): any multiple of the hop; no partial patches
        piece = max(1, per_chunk // hop) * hop
        context = (enc.tshape - enc.tstride) * shift + win - shift
        need = (enc.tshape - 1) * shift + win
    elif cfg.window_mode == "exact":  # windows of the clip's fbank (ASiT): whole windows per piece
        window = cfg.window_frames * shift
        piece, context = max(1, per_chunk // window) * window, win - shift
    elif cfg.window_mode == "s3prl":  # s3prl's SSAST windows: advance by the columns inside one window
        window = cfg.window_frames * shift
        window_fbank = fbank_frames(window, fr.frame_length_ms, fr.frame_shift_ms, sr)
        inside = (window_fbank - enc.tshape) // enc.tstride + 1
        piece, context = inside * hop, window - inside * hop
    else:
        raise ValueError(f"{up.name}: window_mode={cfg.window_mode!r} gives token sequences, not frames on a "
                         f"time grid; load it with the default windowing")
    return FrameGrid(sr, hop, first_centre, need, piece, context)


@torch.no_grad()
def frame_features(up: nn.Module, audio: torch.Tensor, grid: FrameGrid, layer: int | None = None,
                   max_batch: int = 32) -> torch.Tensor:
    """Frame features of equal-length clips on ``grid``.

    Args:
        up: the upstream (in eval mode), on ``audio``'s device.
        audio: (n, S) float waveforms at ``grid.sample_rate``.
        grid: :func:`frame_grid` of ``up``.
        layer: ``hidden_states[layer]``; None = ``last_hidden_state``.
        max_batch: pieces encoded at once (bounds memory on long audio).
    Returns:
        (n, grid.num_frames(S), H) float32; frame ``m`` is centred at ``grid.centres_ms(...)[m]``.
    """
    if audio.ndim != 2:
        raise ValueError(f"audio must be (n_sounds, n_samples), got shape {tuple(audio.shape)}")
    n, S = audio.shape
    T = grid.num_frames(S)
    per = grid.frames_per_piece
    # piece p of every clip has the same length (the clips do), so same-length pieces share a batch unpadded:
    # features are then those of each piece alone, whatever else is in the batch
    jobs = [(i, p) for p in range(math.ceil(T / per)) for i in range(n)]
    out: torch.Tensor | None = None
    for start in range(0, len(jobs), max_batch):
        batch = jobs[start:start + max_batch]
        by_len: dict[int, list[tuple[int, int]]] = {}
        for i, p in batch:
            length = min(S, p * grid.piece + grid.piece + grid.context) - p * grid.piece
            by_len.setdefault(length, []).append((i, p))
        for length, group in by_len.items():
            res = run_upstream(up, [audio[i, p * grid.piece:p * grid.piece + length] for i, p in group],
                               [] if layer is None else [layer])  # only the layer read is kept
            feats = res["last_hidden_state"] if layer is None else res["hidden_states"][0]  # (b, t, H)
            if out is None:
                out = feats.new_zeros(n, T, feats.shape[-1], dtype=torch.float32)
            for b, (i, p) in enumerate(group):
                k = min(per, T - p * per)
                if int(res["lengths"][b]) < k:  # the grid promised frames the upstream did not give
                    raise RuntimeError(f"{up.name}: piece {p} gave {int(res['lengths'][b])} frames, "
                                       f"expected {k}")
                out[i, p * per:p * per + k] = feats[b, :k].float()
    assert out is not None
    return out
