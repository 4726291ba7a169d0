"""The one transformer encoder behind SSAST, MAE-AST and ASiT.

``ASTEncoder`` = optional in-model input normalisation (MAE-AST's ``BatchNorm2d * 0.5``)
-> :class:`~upstream.tokenizer.PatchEmbed` -> prefix tokens (SSAST: cls + dist, ASiT: cls, MAE-AST: none)
-> positional embedding (learned table, or fixed sinusoid zeroed at padding)
-> blocks (pre-norm with a final LayerNorm, or post-norm with a LayerNorm on the input).

The stages are separate methods so objectives can intervene between them without reaching into the
encoder's privates: SSAST swaps masked tokens for a mask embedding after :meth:`tokenize`, MAE-AST
drops them after :meth:`add_position`, ASiT corrupts the spectrogram before :meth:`tokenize`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from .frontend import AUDIOSET_MEAN, AUDIOSET_STD
from .layers import Block, sinusoid_pos_embed
from .tokenizer import PatchEmbed, grid_size


@dataclass
class EncoderConfig:
    """Shape of an :class:`ASTEncoder`. Field names follow the official code where one exists."""

    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_first: bool = True  # pre-norm (SSAST, ASiT) or post-norm (MAE-AST `layer_norm_first=False`)
    norm_eps: float = 1e-6  # timm ViT LayerNorm eps; fairseq uses 1e-5
    # patch geometry (YuanGongND/ssast argument names)
    fshape: int = 16
    tshape: int = 16
    fstride: int = 16
    tstride: int = 16
    input_fdim: int = 128
    input_tdim: int = 1024  # frames the learned position table covers (the model's fixed input length)
    token_order: str = "freq_major"
    num_prefix_tokens: int = 2  # SSAST: cls + dist (DeiT); ASiT: cls; MAE-AST: 0
    pos_embed: str = "learned"  # 'learned' (SSAST, ASiT) or 'sincos' (MAE-AST)
    max_tokens: int = 48000  # longest sequence the sinusoid covers (MAE-AST `max_token_length`)
    input_batchnorm: bool = False  # MAE-AST: BatchNorm2d(1, affine=False)(x) * 0.5 on the spectrogram
    dropout: float = 0.0
    attn_dropout: float = 0.0
    activation_dropout: float = 0.0
    dropout_input: float = 0.0  # fairseq dropout on the block input (MAE-AST 0.1)
    drop_path: float = 0.0
    layerdrop: float = 0.0  # fairseq encoder_layerdrop (only while training; off for features)

    def __post_init__(self):
        if self.pos_embed not in ("learned", "sincos"):
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {self.pos_embed!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by num_heads {self.num_heads}")

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(n_f, n_t)`` at ``input_tdim`` frames."""
        return grid_size(self.input_tdim, self.input_fdim, self.fshape, self.tshape, self.fstride,
                         self.tstride)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown encoder config key(s): {sorted(unknown)}")
        return cls(**d)


class ASTEncoder(nn.Module):
    """Audio spectrogram transformer encoder.

    Input is a normalised log-mel spectrogram ``(B, T, F)`` (time first, as all three front ends give).
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        D = cfg.embed_dim
        self.input_bn = nn.BatchNorm2d(1, affine=False) if cfg.input_batchnorm else None
        if self.input_bn is not None:
            # An untrained model in eval mode (a from-scratch frozen probe, a probe at step 0) normalises as a
            # trained one does: AudioSet log-mel statistics, not BatchNorm's (0, 1), which would leave the
            # log-mel un-normalised. Checkpoints load their own statistics over these.
            self.input_bn.running_mean.fill_(AUDIOSET_MEAN)
            self.input_bn.running_var.fill_(AUDIOSET_STD ** 2)
        self.patch_embed = PatchEmbed(D, cfg.fshape, cfg.tshape, cfg.fstride, cfg.tstride, cfg.token_order)
        if cfg.num_prefix_tokens:
            self.prefix_tokens = nn.Parameter(torch.zeros(1, cfg.num_prefix_tokens, D))
        else:
            self.register_parameter("prefix_tokens", None)
        n_f, n_t = cfg.grid
        if cfg.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_prefix_tokens + n_f * n_t, D))
        else:
            self.register_parameter("pos_embed", None)
        # 'sincos': an official MAE-AST file's own table (L, D), used as stored so that positions are exact on
        # any machine (one recomputed here can differ in the last bits); None = compute. Not in state_dict.
        self.register_buffer("sincos_table", None, persistent=False)
        self.input_drop = nn.Dropout(cfg.dropout_input)  # applied by pretraining objectives only
        # post-norm (fairseq layer_norm_first=False) normalises the block input; pre-norm the output
        self.input_norm = nn.LayerNorm(D, eps=cfg.norm_eps) if not cfg.norm_first else nn.Identity()
        self.block_drop = nn.Dropout(cfg.dropout if not cfg.norm_first else 0.0)
        self.blocks = nn.ModuleList(
            Block(D, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, cfg.norm_first, cfg.norm_eps, cfg.dropout,
                  cfg.attn_dropout, cfg.activation_dropout, cfg.drop_path * i / max(cfg.depth - 1, 1))
            for i in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps) if cfg.norm_first else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm ViT init: trunc-normal(0.02) tables and Linear weights, zero biases, unit LayerNorm."""
        if self.prefix_tokens is not None:
            nn.init.trunc_normal_(self.prefix_tokens, std=0.02)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as MAE: init the patch projection like a Linear

    # ------------------------------------------------------------------ stages, in data-flow order
    @property
    def num_prefix_tokens(self) -> int:
        return self.cfg.num_prefix_tokens

    def grid_for(self, num_frames: int) -> tuple[int, int]:
        c = self.cfg
        return grid_size(num_frames, c.input_fdim, c.fshape, c.tshape, c.fstride, c.tstride)

    def normalize_input(self, fbank: torch.Tensor) -> torch.Tensor:
        """MAE-AST's in-model normalisation ``BatchNorm2d(1)(x) * 0.5``; identity for the others."""
        if self.input_bn is None:
            return fbank
        return self.input_bn(fbank.unsqueeze(1)).squeeze(1) * 0.5

    def tokenize(self, fbank: torch.Tensor) -> torch.Tensor:
        """(B, T, F) spectrogram -> (B, N, D) patch tokens (no position, no prefix)."""
        return self.patch_embed(self.normalize_input(fbank))

    def add_position(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Add positions to patch tokens; prepend the prefix tokens with theirs.

        Args:
            tokens: (B, N, D) patch tokens in grid order.
            padding_mask: (B, N) bool, True = padded token; the sinusoid is zeroed there (MAE-AST).
        Returns:
            (B, P + N, D) with P = ``num_prefix_tokens``.
        """
        B, N, D = tokens.shape
        P = self.cfg.num_prefix_tokens
        if self.pos_embed is not None:
            if self.pos_embed.shape[1] != P + N:
                raise ValueError(
                    f"{N} patch tokens but the position table covers {self.pos_embed.shape[1] - P} "
                    f"(input_tdim={self.cfg.input_tdim} frames); pad or cut the spectrogram to that length"
                )
            x = tokens + self.pos_embed[:, P:]
            prefix = self.prefix_tokens + self.pos_embed[:, :P]
        else:
            if N > self.cfg.max_tokens:
                raise ValueError(f"{N} tokens exceed max_tokens={self.cfg.max_tokens} of the sinusoid")
            if self.sincos_table is not None and N <= self.sincos_table.shape[0]:
                pe = self.sincos_table[:N].to(tokens.dtype).unsqueeze(0)  # (1, N, D)
            else:
                pe = sinusoid_pos_embed(N, D, tokens.device, tokens.dtype).unsqueeze(0)  # (1, N, D)
            if padding_mask is not None:
                pe = pe.masked_fill(padding_mask.unsqueeze(-1), 0.0)
            x = tokens + pe
            prefix = self.prefix_tokens
            if not P:
                return x
        return torch.cat([prefix.expand(B, -1, -1).to(x.dtype), x], dim=1)

    def forward_blocks(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                       indices: list[int] | None = None,
                       sink: Callable[[int, torch.Tensor], None] | None = None,
                       ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Run the blocks.

        Args:
            x: (B, L, D) embedded tokens (prefix included).
            key_padding_mask: (B, L) bool, True = padding (never attended to).
            indices: which block outputs to keep (default all).
            sink: given, each kept output goes to ``sink(block index, output)`` as soon as it is made
                instead of into the returned list (then empty), so a caller that copies them elsewhere
                never holds more than one.
        Returns:
            (outputs of the kept blocks, each (B, L, D); final features after the last norm (B, L, D)).
        """
        keep = set(range(len(self.blocks)) if indices is None else [i % len(self.blocks) for i in indices])
        if key_padding_mask is not None and not bool(key_padding_mask.any()):
            key_padding_mask = None  # lets SDPA take its fused kernels
        x = self.block_drop(self.input_norm(x))
        outs: list[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            if not (self.training and self.cfg.layerdrop > 0 and torch.rand(()) < self.cfg.layerdrop):
                x = blk(x, key_padding_mask)  # else layerdrop: the block is skipped, its input is its output
            if i not in keep:
                continue
            if sink is None:
                outs.append(x)
            else:
                sink(i, x)
        return outs, self.norm(x)

    # ------------------------------------------------------------------ whole passes
    def forward_intermediates(self, fbank: torch.Tensor, token_padding: torch.Tensor | None = None,
                              indices: list[int] | None = None,
                              sink: Callable[[int, torch.Tensor], None] | None = None,
                              ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Spectrogram -> (per-block outputs, final features), prefix tokens included.

        Args:
            fbank: (B, T, F) normalised spectrogram.
            token_padding: (B, N) bool over patch tokens, True = padding.
            indices, sink: as :meth:`forward_blocks`.
        """
        x = self.add_position(self.tokenize(fbank), token_padding)
        kpm = None
        if token_padding is not None:
            P = self.cfg.num_prefix_tokens
            kpm = torch.cat([token_padding.new_zeros(token_padding.shape[0], P), token_padding], dim=1)
        return self.forward_blocks(x, kpm, indices, sink)

    def forward_features(self, fbank: torch.Tensor,
                         token_padding: torch.Tensor | None = None) -> torch.Tensor:
        """Spectrogram (B, T, F) -> final features (B, P + N, D)."""
        return self.forward_intermediates(fbank, token_padding, indices=[])[1]

    forward = forward_features
