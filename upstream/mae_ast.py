"""MAE-AST: Masked Autoencoding Audio Spectrogram Transformer (Baade, Peng, Harwath; Interspeech 2022).

Reference code: AlanBaade/MAE-AST-Public (``mae_ast/models/mae_ast.py``, fairseq) and s3prl's
``upstream/mae_ast`` expert.

A post-norm (fairseq) encoder with no prefix tokens and fixed sinusoidal positions over the flattened,
time-major token index; the spectrogram is normalised inside the model by ``BatchNorm2d(1) * 0.5``.
Upstream features follow s3prl: the whole clip at once, a token padding mask from the fbank lengths
(a partly padded patch counts as valid, as the official ``forward_padding_mask`` does), every layer's
output, tokens of one time step concatenated, layerdrop off. Attention over the whole clip costs the square
of its length; the opt-in ``target_length=N`` (frames, a multiple of the patch step) cuts the clip's fbank
into N-frame windows run as one padded batch, the end of the last window masked, and concatenates their
frame features: linear in the clip's length, each window what the model gives on it alone (a deviation
from the official model, ``docs/deviations.md``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (
    CheckpointError,
    RawCheckpoint,
    block_depth,
    check_sinusoid_table,
    read_checkpoint,
    require_keys,
    resolve_checkpoint,
)
from .config import UpstreamConfig
from .download import OfficialCheckpoint
from .encoder import ASTEncoder, EncoderConfig
from .frontend import FbankConfig
from .interface import Upstream, upstream_with_weights
from .layers import Block
from .masking import (
    chunk_mask,
    gather_tokens,
    mae_ast_num_masked,
    mae_random_mask,
    masked_indices,
    visible_indices,
)
from .objective import Objective, block_train_flops, info_nce, linear_flops, override_encoder
from .registry import FamilySpec, PretrainShortcut, check_overrides, register_family, register_upstream
from .safe_load import plain_config
from .tokenizer import convert_patch_weight, patchify

SIZES = {
    "mini": dict(embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0),
    "base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
}
TOKENS = {  # ast_kernel_size/stride (chan, time): README commands of MAE-AST-Public
    "patch": dict(fshape=16, tshape=16, fstride=16, tstride=16),
    "frame": dict(fshape=128, tshape=2, fstride=128, tstride=2),
}
OVERRIDES = {"partial_patch_valid", "pooling", "random_init", "model_size", "target_length"}


def encoder_config(token: str, size: str) -> EncoderConfig:
    """MAE-AST encoder as configured in ``config/pretrain/mae_ast.yaml`` (dropouts 0.1, layerdrop 0.05)."""
    return EncoderConfig(**SIZES[size], **TOKENS[token], input_tdim=TOKENS[token]["tshape"],
                         token_order="time_major", num_prefix_tokens=0, pos_embed="sincos", norm_first=False,
                         norm_eps=1e-5, input_batchnorm=True, dropout=0.1, attn_dropout=0.1,
                         dropout_input=0.1, layerdrop=0.05)


def build_mae_ast(name: str, token: str, size: str, default_file: str | None, ckpt=None,
                  **overrides) -> Upstream:
    check_overrides(name, overrides, OVERRIDES)
    path = resolve_checkpoint(name, ckpt, default_file, overrides.get("random_init", False))
    raw = read_checkpoint(path) if path is not None else None
    frontend = FbankConfig.mae_ast()
    if raw is not None:
        if raw.family != "mae_ast":
            raise CheckpointError(f"{raw.path} is a {raw.family} checkpoint, but {name!r} is a MAE-AST "
                                  f"upstream")
        enc = raw.encoder
        want = TOKENS[token]
        if (enc.fshape, enc.tshape) != (want["fshape"], want["tshape"]):
            raise CheckpointError(
                f"{raw.path} has {enc.tshape}x{enc.fshape} (time x chan) kernels, but {name!r} expects "
                f"{want['tshape']}x{want['fshape']}; use mae_ast_{'frame' if enc.fshape == 128 else 'patch'}"
            )
        if raw.source == "official":
            frontend.sample_rate = raw.extra["sample_rate"]
            frontend.num_mel_bins = raw.extra["feature_dim"]
        else:
            frontend = raw.extra["upstream_config"].frontend
    else:
        enc = encoder_config(token, overrides.get("model_size", size))
    # opt-in windows for long audio (docs/deviations.md): target_length=N cuts the clip's fbank into N-frame
    # windows whose frame features are concatenated; None (the official model, s3prl) attends over it all
    target = overrides.get("target_length", frontend.target_length)
    if target is not None and (not isinstance(target, int) or isinstance(target, bool) or target < enc.tshape
                               or target % enc.tstride):
        raise ValueError(f"{name}: target_length must be None (the whole clip) or a whole number of "
                         f"{enc.tstride}-frame patch steps (at least {enc.tshape} frames), got {target!r}")
    frontend = replace(frontend, target_length=target)
    # s3prl's expert sets encoder.layerdrop = 0 so hidden states have defined indices, also with -f; a
    # windowed model's input length is its window (the one length, frontend.target_length)
    enc = EncoderConfig.from_dict({**enc.to_dict(), "layerdrop": 0.0,
                                   "input_tdim": target if target is not None else enc.tshape})
    cfg = UpstreamConfig("mae_ast", enc, frontend, window_mode="exact" if target is not None else "s3prl",
                         partial_patch_valid=overrides.get("partial_patch_valid", True),
                         pooling=overrides.get("pooling", "mean"))
    return upstream_with_weights(cfg, name, raw)


# ------------------------------------------------------------------------------------- official checkpoint
MAE_AST_MODEL_KEYS = ("encoder_embed_dim", "encoder_layers", "encoder_attention_heads",
                      "encoder_ffn_embed_dim", "ast_kernel_size_chan", "ast_kernel_size_time",
                      "ast_kernel_stride_chan", "ast_kernel_stride_time")


def _cfg_int(section: dict, key: str, path: Path, default: int | None = None) -> int:
    value = section.get(key, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"MAE-AST checkpoint {path}: cfg['model'][{key!r}] is {value!r}, "
                              f"not an integer") from None


def is_official_checkpoint(obj: dict) -> bool:
    """A fairseq ``Trainer.state_dict()``: ``cfg`` and ``model`` at the top level."""
    return "cfg" in obj and "model" in obj


def read_official_checkpoint(obj: dict, path: Path, sha: str) -> RawCheckpoint:
    """An official MAE-AST ``.pt``: shapes from ``cfg['model']`` / ``cfg['task']`` (plain dict or omegaconf),
    weights in ``model`` with no prefix, separate q/k/v projections (merged here)."""
    cfg = plain_config(obj["cfg"])  # a plain dict, or omegaconf's DictConfig as older fairseq pickled it
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(k), dict) for k in ("model", "task")):
        raise CheckpointError(f"fairseq checkpoint {path} has no cfg['model'] / cfg['task'] dicts")
    m, t = cfg["model"], cfg["task"]
    if m.get("_name") not in (None, "mae_ast"):
        raise CheckpointError(f"fairseq checkpoint {path} is a {m.get('_name')!r} model, not 'mae_ast'")
    missing = [k for k in MAE_AST_MODEL_KEYS if k not in m]
    if missing:
        raise CheckpointError(f"MAE-AST checkpoint {path}: cfg['model'] lacks {', '.join(missing)} (needed "
                              f"for the encoder's shape)")
    if t.get("feature_type", "fbank") != "fbank":
        raise CheckpointError(f"MAE-AST checkpoint {path}: feature_type {t.get('feature_type')!r} is not "
                              f"supported (only 'fbank', as released)")
    if m.get("enc_conv_pos") or not m.get("enc_sine_pos", True):
        raise CheckpointError(f"MAE-AST checkpoint {path}: only sinusoidal encoder positions are supported "
                              f"(enc_sine_pos=True, enc_conv_pos=False), as in the released models")
    if m.get("activation_fn", "gelu") != "gelu":
        raise CheckpointError(f"MAE-AST checkpoint {path}: activation_fn {m['activation_fn']!r} unsupported")
    sd = obj["model"]
    if not isinstance(sd, dict):
        raise CheckpointError(f"MAE-AST checkpoint {path}: 'model' holds a {type(sd).__name__}, not a state "
                              f"dict")
    D, depth = _cfg_int(m, "encoder_embed_dim", path), _cfg_int(m, "encoder_layers", path)
    kc, kt = _cfg_int(m, "ast_kernel_size_chan", path), _cfg_int(m, "ast_kernel_size_time", path)
    sc, st = _cfg_int(m, "ast_kernel_stride_chan", path), _cfg_int(m, "ast_kernel_stride_time", path)
    pre = "encoder.layers."
    require_keys(sd, ["post_extract_proj.weight", "batch_norm.running_mean", "encoder.layer_norm.weight",
                      f"{pre}{depth - 1}.fc2.weight"], path, "MAE-AST")
    if block_depth(sd, pre) != depth:
        raise CheckpointError(f"MAE-AST checkpoint {path}: cfg says {depth} encoder layers, weights hold "
                              f"{block_depth(sd, pre)}")
    max_tokens = _cfg_int(m, "max_token_length", path, 48000)
    table = sd.get("enc_sine_pos_embed.pe")  # (1, max_token_length, D)
    if table is not None:
        table = check_sinusoid_table(table, D, path)
        max_tokens = min(max_tokens, table.shape[0])
    norm_first = bool(m.get("layer_norm_first", False))
    enc = EncoderConfig(
        embed_dim=D, depth=depth, num_heads=_cfg_int(m, "encoder_attention_heads", path),
        mlp_ratio=_cfg_int(m, "encoder_ffn_embed_dim", path) / D, norm_first=norm_first, norm_eps=1e-5,
        fshape=kc, tshape=kt, fstride=sc, tstride=st, input_fdim=int(t.get("feature_dim", 128)),
        input_tdim=kt, token_order="time_major", num_prefix_tokens=0, pos_embed="sincos",
        max_tokens=max_tokens, input_batchnorm=True,
        dropout=float(m.get("dropout", 0.0)), attn_dropout=float(m.get("attention_dropout", 0.0)),
        activation_dropout=float(m.get("activation_dropout", 0.0)),
        dropout_input=float(m.get("dropout_input", 0.0)), layerdrop=float(m.get("encoder_layerdrop", 0.0)),
    )
    state = {
        "patch_embed.proj.weight": convert_patch_weight(sd["post_extract_proj.weight"], "mae_ast", kc, kt),
        "patch_embed.proj.bias": sd["post_extract_proj.bias"],
        "input_bn.running_mean": sd["batch_norm.running_mean"],
        "input_bn.running_var": sd["batch_norm.running_var"],
        "input_bn.num_batches_tracked": sd.get("batch_norm.num_batches_tracked", torch.tensor(0)),
    }
    ln = "norm" if norm_first else "input_norm"  # fairseq: final LN if layer_norm_first else input LN
    state[f"{ln}.weight"] = sd["encoder.layer_norm.weight"]
    state[f"{ln}.bias"] = sd["encoder.layer_norm.bias"]
    require_keys(sd, [f"{pre}{i}.{k}.{wb}" for i in range(depth) for wb in ("weight", "bias") for k in
                      ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                       "self_attn_layer_norm", "final_layer_norm", "fc1", "fc2")], path, "MAE-AST")
    for i in range(depth):
        s, d = f"{pre}{i}.", f"blocks.{i}."
        for wb in ("weight", "bias"):
            state[d + f"attn.qkv.{wb}"] = torch.cat([sd[s + f"self_attn.{p}_proj.{wb}"] for p in "qkv"], 0)
            state[d + f"attn.proj.{wb}"] = sd[s + f"self_attn.out_proj.{wb}"]
            state[d + f"norm1.{wb}"] = sd[s + f"self_attn_layer_norm.{wb}"]
            state[d + f"norm2.{wb}"] = sd[s + f"final_layer_norm.{wb}"]
            state[d + f"mlp.fc1.{wb}"] = sd[s + f"fc1.{wb}"]
            state[d + f"mlp.fc2.{wb}"] = sd[s + f"fc2.{wb}"]
    extra = {"sample_rate": int(t.get("sample_rate", 16000)), "feature_dim": int(t.get("feature_dim", 128)),
             "mask_type": t.get("mask_type"), "cfg_model": m, "cfg_task": t, "sincos_table": table}
    return RawCheckpoint("mae_ast", "official", str(path), sha, enc, state, extra)



# ------------------------------------------------------------------------------------------ pretraining
@dataclass
class MAEASTPretrainConfig:
    """MAE-AST pretraining (``config/pretrain/mae_ast.yaml``, ``mae_ast_criterion.py``)."""

    token: str = "patch"
    size: str = "base"
    mask_ratio: float = 0.75
    mask_type: str = "chunk"  # 'chunk' (patch model, one mask per batch) or 'random' (frame model, per clip)
    chunk_shared: bool = True  # the official chunk mask is shared by the whole batch
    recon_weight: float = 10.0
    class_weight: float = 1.0
    decoder_depth: int = 2
    objective: str = "joint"  # 'joint' (recon + InfoNCE) or 'generative' (recon only)
    crop_secs: float = 10.0  # random crop per clip (the official max_sample_size is 250k samples)
    # EncoderConfig fields overriding the size table, e.g. {depth: 3} or {dropout: 0.0}; the decoder shares
    # the encoder's width, heads, FFN and dropouts, as the official TransformerEncoder(cfg, decoder=True)
    encoder: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.mask_type not in ("chunk", "random"):
            raise ValueError(f"MAE-AST mask_type must be 'chunk' or 'random', got {self.mask_type!r}")
        if self.objective not in ("joint", "generative"):
            raise ValueError(f"MAE-AST objective must be 'joint' or 'generative', got {self.objective!r}")


class Decoder(nn.Module):
    """Shallow post-norm transformer over encoder outputs + mask tokens: fairseq's ``TransformerEncoder``
    with ``layer_norm_first=False`` (LayerNorm on the input, then dropout, then the layers)."""

    def __init__(self, cfg: EncoderConfig, depth: int):
        super().__init__()
        D = cfg.embed_dim
        self.input_norm = nn.LayerNorm(D, eps=cfg.norm_eps)
        self.input_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(D, cfg.num_heads, cfg.mlp_ratio, True, False, cfg.norm_eps,
                                          cfg.dropout, cfg.attn_dropout, cfg.activation_dropout)
                                    for _ in range(depth))
        for m in self.blocks.modules():  # fairseq init_bert_params: N(0, 0.02) weights, zero biases
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, N, D)."""
        x = self.input_drop(self.input_norm(x))
        for blk in self.blocks:
            x = blk(x)
        return x


class MAEASTObjective(Objective):
    """The encoder sees only the visible tokens; the decoder sees encoder outputs at visible positions and a
    shared learned mask token elsewhere (both with fixed sinusoidal positions); one linear head reconstructs
    the masked patches (MSE), another classifies them among the clip's masked patches (InfoNCE)."""

    family = "mae_ast"

    def __init__(self, cfg: MAEASTPretrainConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ASTEncoder(override_encoder(encoder_config(cfg.token, cfg.size), cfg.encoder,
                                                   "mae_ast"))
        e, D = self.encoder.cfg, self.encoder.cfg.embed_dim
        self.decoder = Decoder(e, cfg.decoder_depth)
        self.decoder_mask_emb = nn.Parameter(torch.empty(D).uniform_())  # as fairseq's mask embeddings
        patch_dim = e.fshape * e.tshape
        self.final_proj_reconstruction = nn.Linear(D, patch_dim)
        self.final_proj_classification = nn.Linear(D, patch_dim) if cfg.objective == "joint" else None
        self.frontend = FbankConfig.mae_ast()
        self.crop_secs = cfg.crop_secs

    def upstream_config(self) -> UpstreamConfig:
        return UpstreamConfig("mae_ast", self.encoder.cfg, FbankConfig.mae_ast())

    def forward(self, fbank: torch.Tensor, num_frames: torch.Tensor | None,
                generator: torch.Generator | None = None, mask: torch.Tensor | None = None):
        """fbank (B, T, F) unnormalised log-mel (the model's BatchNorm normalises it) -> (loss, logs).

        ``mask``: (B, N) bool, True = masked (time-major token ids, the same count in every row), e.g. the
        official ``mask_indices`` of a golden fixture; default: drawn from ``generator``.
        """
        c, e, enc = self.cfg, self.encoder.cfg, self.encoder
        x = enc.normalize_input(fbank)  # BatchNorm * 0.5, batch statistics while training
        n_f, n_t = enc.grid_for(fbank.shape[1])
        N = n_f * n_t
        target = patchify(x, e.fshape, e.tshape, "time_major")  # (B, N, p), the normalised patches
        tokens = enc.input_drop(enc.patch_embed(x))  # (B, N, D); dropout_input as the official pretraining
        B, _, D = tokens.shape
        num_masked = mae_ast_num_masked(N, c.mask_ratio)
        if mask is None:
            mask = self.draw_mask(B, (n_f, n_t), generator, fbank.device)  # (B, N)
        elif (mask.dtype != torch.bool or tuple(mask.shape) != (B, N)
              or bool((mask.sum(1) != num_masked).any())):
            raise ValueError(f"MAE-AST mask must be bool ({B}, {N}) with {num_masked} True per row "
                             f"(mask_ratio={c.mask_ratio}), got {mask.dtype} {tuple(mask.shape)}")
        ids_keep, ids_restore = visible_indices(mask, num_masked)  # (B, N_vis), (B, N)
        visible = gather_tokens(enc.add_position(tokens), ids_keep)  # (B, N_vis, D): positions added first
        _, latent = enc.forward_blocks(visible, indices=[])  # post-norm: the last layer's output
        # decoder input: encoder outputs back in place, the shared mask token elsewhere, fresh positions (the
        # decoder's sinusoid is the encoder's: same width; the official dec_sine_pos_embed is the same table)
        full = torch.cat([latent, self.decoder_mask_emb.to(latent.dtype).expand(B, num_masked, D)], dim=1)
        full = enc.add_position(gather_tokens(full, ids_restore))  # (B, N, D)
        out = self.decoder(full)  # (B, N, D)
        ids_masked = masked_indices(mask, num_masked)  # (B, M), increasing (the official boolean indexing)
        out_m, tgt_m = gather_tokens(out, ids_masked), gather_tokens(target, ids_masked)  # (B, M, *)
        recon = torch.mean((self.final_proj_reconstruction(out_m).float() - tgt_m.float()) ** 2)
        loss, logs = c.recon_weight * recon, {"recon": recon.detach()}
        if self.final_proj_classification is not None:
            nce, acc = info_nce(self.final_proj_classification(out_m), tgt_m, over="targets")
            loss = loss + c.class_weight * nce
            logs.update(nce=nce.detach(), masked_acc=acc)
        return loss, logs

    def draw_mask(self, batch: int, grid: tuple[int, int], generator: torch.Generator | None,
                  device: torch.device) -> torch.Tensor:
        """(B, N) bool, True = masked: chunks (one mask per batch, as the official) or uniform per clip."""
        c, N = self.cfg, grid[0] * grid[1]
        if c.mask_type == "chunk":
            return chunk_mask(batch, grid, c.mask_ratio, order="time_major",
                              shared_across_batch=c.chunk_shared, generator=generator, device=device)
        return mae_random_mask(batch, N, c.mask_ratio, generator=generator, device=device)

    def step_flops(self, num_frames: int) -> float:
        """Analytic FLOPs of one training step per clip of ``num_frames`` fbank frames
        (:func:`~upstream.objective.block_train_flops`): patch embedding over N tokens; the encoder over the
        N - M visible ones; the decoder over all N; the reconstruction (and classification) heads and InfoNCE
        on the M masked tokens."""
        e, c = self.encoder.cfg, self.cfg
        D, r, patch = e.embed_dim, e.mlp_ratio, e.fshape * e.tshape
        n_f, n_t = self.encoder.grid_for(num_frames)
        N = n_f * n_t
        M = mae_ast_num_masked(N, c.mask_ratio)
        heads = 1 + int(self.final_proj_classification is not None)
        return (linear_flops(N, patch, D) + block_train_flops(N - M, D, e.depth, r)
                + block_train_flops(N, D, c.decoder_depth, r) + heads * linear_flops(M, D, patch)
                + (heads - 1) * 3 * 2 * M * M * patch)


# ------------------------------------------------------------------------------------------ registry
def _register(name: str, token: str, size: str, default_file: str | None, desc: str) -> None:
    def builder(ckpt=None, **overrides) -> Upstream:
        if default_file is None:
            overrides.setdefault("random_init", ckpt is None)
        return build_mae_ast(name, token, size, default_file, ckpt, **overrides)

    builder.__doc__ = desc
    register_upstream(name, desc, family="mae_ast")(builder)


_register("mae_ast_patch", "patch", "base", "chunk_patch_75_12LayerEncoder.pt",
          "MAE-AST Patch (16x16, chunked masking 75%), 12-layer encoder")
_register("mae_ast_frame", "frame", "base", "random_frame_75_12LayerEncoder.pt",
          "MAE-AST Frame (128x2, random masking 75%), 12-layer encoder")
_register("mae_ast_patch_mini", "patch", "mini", None, "test-size MAE-AST patch model (D=64, 2 layers)")
_register("mae_ast_frame_mini", "frame", "mini", None, "test-size MAE-AST frame model (D=64, 2 layers)")

_README = "AlanBaade/MAE-AST-Public README, 'Pretrained Model Download'"
_SALTLAB = "https://saltlab.cs.utexas.edu/downloads/model_checkpoints/mae_ast/"  # the authors' README
_S3PRL = "https://www.cs.utexas.edu/~harwath/model_checkpoints/mae_ast/"  # s3prl's mae_ast hubconf
RELEASES = tuple(OfficialCheckpoint(name, file, (_SALTLAB + file, _S3PRL + file), _README)
                 for name, file in (("mae_ast_patch", "chunk_patch_75_12LayerEncoder.pt"),
                                    ("mae_ast_frame", "random_frame_75_12LayerEncoder.pt")))

FAMILY = register_family(FamilySpec(
    name="mae_ast", title="MAE-AST", module=__name__,
    objective=MAEASTObjective, objective_config=MAEASTPretrainConfig,
    frontend=lambda target_length=None: FbankConfig.mae_ast(), overrides=frozenset(OVERRIDES),
    checkpoint_format="MAE-AST fairseq .pt", detect_checkpoint=is_official_checkpoint,
    read_checkpoint=read_official_checkpoint,
    shortcuts=tuple(PretrainShortcut(f"mae_ast_{tok}", {"family": "mae_ast", "token": tok},
                                     f"configs/pretrain/mae_ast_{tok}.yaml",
                                     f"configs/pretrain/mae_ast_{tok}_mini.yaml", f"mae_ast_{tok}_mini")
                    for tok in ("patch", "frame")),
    upstream_prefix=lambda cfg: f"mae_ast_{cfg.token}",
    releases=RELEASES,
))
