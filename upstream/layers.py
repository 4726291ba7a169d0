"""Transformer building blocks shared by SSAST, MAE-AST and ASiT.

One copy of each block serves all three models (timm ``layers/`` and dinov2 ``layers/`` are the
pattern). Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention` with an
optional key-padding mask, so a padded batch gives the same features as one clip at a time.

Two block flavours cover the papers:

* pre-norm (``norm_first=True``): timm ``vision_transformer.Block`` as used by SSAST (DeiT backbone)
  and ASiT: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``, LayerNorm eps 1e-6.
* post-norm (``norm_first=False``): fairseq ``TransformerSentenceEncoderLayer`` with
  ``layer_norm_first=False`` as used by MAE-AST: ``norm1(x + attn(x))``, ``norm2(x + mlp(x))``,
  LayerNorm eps 1e-5.

Positional embeddings: the fixed 1-D sinusoid of MAE-AST and SSAST's rule for adapting a learned
2-D table to a new patch grid (copied literally, including its quirks).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
    """Two-layer feed-forward network: ``fc2(drop(act(fc1(x))))``."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0, activation_dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()  # erf GELU in timm 0.4.5 and fairseq ('gelu')
        self.act_drop = nn.Dropout(activation_dropout)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act_drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (q, k, v in that order).

    fairseq's separate ``q_proj/k_proj/v_proj`` are concatenated into ``qkv`` at load time; the scaling
    (``head_dim ** -0.5`` on q before the product) is the same in both, and is what SDPA applies.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_dropout: float = 0.0,
                 proj_dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_dropout = attn_dropout
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: (B, N, D) tokens.
            key_padding_mask: (B, N) bool, True where the token is padding and must not be attended to.
        """
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        attn_mask = None
        if key_padding_mask is not None:
            attn_mask = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, N), True = attend
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_dropout if self.training else 0.0
        )  # (B, H, N, Dh)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, D)))


class DropPath(nn.Module):
    """Stochastic depth per sample (ASiT student: drop_path_rate 0.1)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class Block(nn.Module):
    """Transformer block, pre-norm (SSAST, ASiT) or post-norm (MAE-AST)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_first: bool = True, norm_eps: float = 1e-6, dropout: float = 0.0,
                 attn_dropout: float = 0.0, activation_dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm_first = norm_first
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_dropout, proj_dropout=0.0)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=0.0, activation_dropout=activation_dropout)
        # fairseq applies dropout to each residual branch; timm applies drop_path (both 0 at eval).
        self.drop = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.norm_first:
            x = x + self.drop_path(self.drop(self.attn(self.norm1(x), key_padding_mask)))
            return x + self.drop_path(self.drop(self.mlp(self.norm2(x))))
        x = self.norm1(x + self.drop_path(self.drop(self.attn(x, key_padding_mask))))
        return self.norm2(x + self.drop_path(self.drop(self.mlp(x))))


# --------------------------------------------------------------------------------------------------
# Positional embeddings
# --------------------------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _sinusoid_cpu(num_positions: int, dim: int) -> torch.Tensor:
    position = torch.arange(num_positions).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(num_positions, dim)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


def sinusoid_pos_embed(num_positions: int, dim: int, device: torch.device | None = None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Fixed 1-D sinusoidal table ``(N, D)``: ``pe[n, 2i] = sin(n / 10000^(2i/D))``, ``pe[n, 2i+1] = cos``.

    Computed in float32 as MAE-AST's ``SinusoidalPositionalEncoding`` builds its ``pe`` buffer; ``exp`` and
    ``sin`` round differently on other CPUs (3e-5 apart at position 1024), so an encoder loaded from an
    official file uses the file's own table instead (``ASTEncoder.sincos_table``).
    """
    return _sinusoid_cpu(num_positions, dim).to(device=device, dtype=dtype)


def ssast_adapt_pos_embed(pos_embed: torch.Tensor, num_prefix: int, p_f_dim: int, p_t_dim: int,
                          f_dim: int, t_dim: int) -> torch.Tensor:
    """Adapt a pretraining positional table to a fine-tuning patch grid, SSAST's way.

    Literal reproduction of YuanGongND/ssast ``src/models/ast_models.py`` (fine-tune branch): rows after
    the prefix tokens are a frequency-major ``(p_f_dim, p_t_dim)`` grid; time is centre-cut or bilinearly
    interpolated to ``(8, t_dim)`` (the 8 is hard-coded there, even for frame models), then frequency is
    centre-cut (the slice end uses ``t_dim``, as in the original) or interpolated to ``(f_dim, t_dim)``.

    Args:
        pos_embed: (1, num_prefix + p_f_dim * p_t_dim, D).
    Returns:
        (1, num_prefix + f_dim * t_dim, D).
    """
    D = pos_embed.shape[-1]
    grid = pos_embed[:, num_prefix:, :].detach().transpose(1, 2).reshape(1, D, p_f_dim, p_t_dim)
    if t_dim < p_t_dim:
        start = p_t_dim // 2 - t_dim // 2
        grid = grid[:, :, :, start:start + t_dim]
    else:
        grid = F.interpolate(grid, size=(8, t_dim), mode="bilinear")
    if f_dim < p_f_dim:
        start = p_f_dim // 2 - f_dim // 2
        grid = grid[:, :, start:start + t_dim, :]  # sic: the original slices with t_dim
        if grid.shape[2] != f_dim:
            raise ValueError(
                f"SSAST's position-table cut (frequency rows sliced with t_dim, as in ast_models.py) cannot "
                f"map a {p_f_dim}x{p_t_dim} grid to {f_dim}x{t_dim}; the official code fails here too. Use "
                f"an fstride that gives at least {p_f_dim} frequency patches"
            )
    else:
        grid = F.interpolate(grid, size=(f_dim, t_dim), mode="bilinear")
    grid = grid.reshape(1, D, f_dim * t_dim).transpose(1, 2)  # (1, f_dim * t_dim, D)
    return torch.cat([pos_embed[:, :num_prefix, :].detach(), grid], dim=1)
