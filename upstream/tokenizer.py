"""Spectrogram tokenizers: 16x16 patches, 128x2 frames, any shape and stride, either token order.

Every model here cuts a log-mel spectrogram ``(B, T, F)`` into rectangles of ``tshape`` frames by
``fshape`` mel bins, stepping ``tstride`` / ``fstride``, and projects each one linearly. The three
checkpoints store that projection differently and flatten the resulting grid in different orders:

=========  ====================================================  ==============================
model      stored projection                                     token order
=========  ====================================================  ==============================
SSAST      Conv2d weight ``(D, 1, fshape, tshape)`` on (B,1,F,T)  frequency-major ``f*n_t + t``
ASiT       Conv2d weight ``(D, 1, 16, 16)`` on (B,1,T,F)          time-major ``t*n_f + f``
MAE-AST    Linear ``(D, tshape*fshape)`` after ``nn.Unfold``      time-major ``t*n_f + f``
=========  ====================================================  ==============================

:class:`PatchEmbed` keeps one canonical weight ``(D, 1, tshape, fshape)`` applied to ``(B, 1, T, F)``
and emits tokens in the requested ``order``; :func:`convert_patch_weight` maps each stored form to it.
Frames that do not fill a whole patch at the end are dropped (``nn.Unfold`` / strided conv behaviour).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TOKEN_ORDERS = ("freq_major", "time_major")


def grid_size(num_frames: int, num_bins: int, fshape: int, tshape: int, fstride: int,
              tstride: int) -> tuple[int, int]:
    """Patch grid ``(n_f, n_t)`` for a ``num_frames x num_bins`` spectrogram (0 rows if too short)."""
    n_f = (num_bins - fshape) // fstride + 1
    n_t = (num_frames - tshape) // tstride + 1 if num_frames >= tshape else 0
    return n_f, n_t


class PatchEmbed(nn.Module):
    """Linear projection of spectrogram patches.

    Args:
        embed_dim: token width D.
        fshape, tshape: patch size in mel bins / frames (``fshape``, ``tshape`` in YuanGongND/ssast;
            ``ast_kernel_size_chan`` / ``ast_kernel_size_time`` in MAE-AST).
        fstride, tstride: patch step (``fstride``/``tstride``; ``ast_kernel_stride_chan/_time``).
        order: ``'freq_major'`` (SSAST) or ``'time_major'`` (MAE-AST, ASiT).
    """

    def __init__(self, embed_dim: int, fshape: int, tshape: int, fstride: int, tstride: int,
                 order: str = "freq_major"):
        super().__init__()
        if order not in TOKEN_ORDERS:
            raise ValueError(f"token order must be one of {TOKEN_ORDERS}, got {order!r}")
        self.fshape, self.tshape, self.fstride, self.tstride = fshape, tshape, fstride, tstride
        self.order = order
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=(tshape, fshape), stride=(tstride, fstride))

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, T, F) spectrogram -> (B, N, D) tokens in ``self.order``."""
        x = self.proj(fbank.unsqueeze(1))  # (B, D, n_t, n_f)
        if self.order == "freq_major":
            x = x.transpose(2, 3)  # (B, D, n_f, n_t)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)


def convert_patch_weight(weight: torch.Tensor, source: str, fshape: int, tshape: int) -> torch.Tensor:
    """Map a stored patch projection to :class:`PatchEmbed`'s ``(D, 1, tshape, fshape)`` conv weight.

    Args:
        weight: ``(D, 1, fshape, tshape)`` for ``source='ssast'``; ``(D, 1, tshape, fshape)`` for
            ``'asit'``; ``(D, tshape * fshape)`` (time outer, mel bin inner) for ``'mae_ast'``.
    """
    if source == "ssast":
        return weight.transpose(2, 3).contiguous()
    if source == "asit":
        return weight
    if source == "mae_ast":
        return weight.reshape(weight.shape[0], 1, tshape, fshape)
    raise ValueError(f"unknown patch weight source {source!r}")


def patchify(fbank: torch.Tensor, fshape: int, tshape: int, order: str = "freq_major") -> torch.Tensor:
    """Non-overlapping patches as flat vectors, the pretraining targets.

    Args:
        fbank: (B, T, F) spectrogram.
    Returns:
        (B, N, tshape * fshape), tokens in ``order``, each patch flattened time-outer / bin-inner.
    """
    B, T, Fb = fbank.shape
    n_t, n_f = T // tshape, Fb // fshape
    x = fbank[:, : n_t * tshape, : n_f * fshape].reshape(B, n_t, tshape, n_f, fshape)
    x = x.permute(0, 1, 3, 2, 4) if order == "time_major" else x.permute(0, 3, 1, 2, 4)
    return x.reshape(B, n_t * n_f, tshape * fshape)  # (B, N, tshape*fshape)


def unpatchify(patches: torch.Tensor, n_f: int, n_t: int, fshape: int, tshape: int,
               order: str = "freq_major") -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, N, tshape*fshape) -> (B, n_t*tshape, n_f*fshape)."""
    B = patches.shape[0]
    if order == "time_major":
        x = patches.reshape(B, n_t, n_f, tshape, fshape).permute(0, 1, 3, 2, 4)
    else:
        x = patches.reshape(B, n_f, n_t, tshape, fshape).permute(0, 2, 3, 1, 4)
    return x.reshape(B, n_t * tshape, n_f * fshape)


def token_padding_mask(num_frames: torch.Tensor, n_t: int, n_f: int, tshape: int, tstride: int,
                       order: str = "time_major", partial_patch_valid: bool = True) -> torch.Tensor:
    """Token-level padding mask (True = padding) from per-clip valid frame counts.

    With ``partial_patch_valid=True`` this is MAE-AST's ``forward_padding_mask``: a patch row holding any
    valid frame counts as valid, so clip i is padded from time row ``(frames_i - 1) // tshape + 1`` on
    (written for non-overlapping time patches, as MAE-AST uses). With ``False`` a row is valid only if
    all its frames are, which is what one clip alone would produce (no partial row exists there).

    Args:
        num_frames: (B,) valid frames per clip.
    Returns:
        (B, n_f * n_t) bool in ``order``.
    """
    rows = torch.arange(n_t, device=num_frames.device)
    if partial_patch_valid:
        valid_rows = (num_frames - 1).div(tshape, rounding_mode="floor") + 1
    else:
        valid_rows = (num_frames - tshape).div(tstride, rounding_mode="floor") + 1
    pad_t = rows[None, :] >= valid_rows.clamp(min=0)[:, None]  # (B, n_t)
    if order == "time_major":
        return pad_t[:, :, None].expand(-1, n_t, n_f).reshape(len(num_frames), n_t * n_f)
    return pad_t[:, None, :].expand(-1, n_f, n_t).reshape(len(num_frames), n_f * n_t)


def tokens_to_time_rows(x: torch.Tensor, n_f: int, n_t: int, order: str) -> torch.Tensor:
    """(B, N, D) patch tokens -> (B, n_t, n_f * D): the frequency patches of each time step concatenated.

    This is the frame-level layout s3prl's SSAST and MAE-AST experts return.
    """
    B, _, D = x.shape
    if order == "time_major":
        return x.reshape(B, n_t, n_f * D)
    return x.reshape(B, n_f, n_t, D).transpose(1, 2).reshape(B, n_t, n_f * D)


def pad_frames(fbank: torch.Tensor, target: int, value: float = 0.0) -> torch.Tensor:
    """Zero-pad or cut (B, T, F) to exactly ``target`` frames."""
    T = fbank.shape[1]
    if T >= target:
        return fbank[:, :target]
    return F.pad(fbank, (0, 0, 0, target - T), value=value)
