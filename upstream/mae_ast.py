"""MAE-AST: Masked Autoencoding Audio Spectrogram Transformer (Baade, Peng, Harwath; Interspeech 2022).

Reference code: AlanBaade/MAE-AST-Public (``mae_ast/models/mae_ast.py``, fairseq) and s3prl's
``upstream/mae_ast`` expert.

A post-norm (fairseq) encoder with no prefix tokens and fixed sinusoidal positions over the flattened,
time-major token index; the spectrogram is normalised inside the model by ``BatchNorm2d(1) * 0.5``.
Upstream features follow s3prl: the whole clip at once, a token padding mask from the fbank lengths
(a partly padded patch counts as valid, as the official ``forward_padding_mask`` does), every layer's
output, tokens of one time step concatenated, layerdrop off.
"""
from __future__ import annotations

from .checkpoint import CheckpointError, read_checkpoint
from .encoder import EncoderConfig
from .frontend import FbankConfig
from .interface import Upstream, UpstreamConfig
from .registry import check_overrides, register_upstream, resolve_checkpoint

SIZES = {
    "mini": dict(embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0),
    "base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
}
TOKENS = {  # ast_kernel_size/stride (chan, time): README commands of MAE-AST-Public
    "patch": dict(fshape=16, tshape=16, fstride=16, tstride=16),
    "frame": dict(fshape=128, tshape=2, fstride=128, tstride=2),
}
OVERRIDES = {"partial_patch_valid", "pooling", "random_init", "model_size"}


def encoder_config(token: str, size: str) -> EncoderConfig:
    """MAE-AST encoder as configured in ``config/pretrain/mae_ast.yaml`` (dropouts 0.1, layerdrop 0.05)."""
    return EncoderConfig(**SIZES[size], **TOKENS[token], input_tdim=TOKENS[token]["tshape"],
                         token_order="time_major", num_prefix_tokens=0, pos_embed="sincos", norm_first=False,
                         norm_eps=1e-5, input_batchnorm=True, dropout=0.1, attn_dropout=0.1,
                         dropout_input=0.1, layerdrop=0.05)


def build_mae_ast(name: str, token: str, size: str, default_file: str | None, ckpt=None, **overrides) -> Upstream:
    check_overrides(name, overrides, OVERRIDES)
    path = resolve_checkpoint(name, ckpt, default_file, overrides.get("random_init", False))
    raw = read_checkpoint(path) if path is not None else None
    frontend = FbankConfig.mae_ast()
    if raw is not None:
        if raw.family != "mae_ast":
            raise CheckpointError(f"{raw.path} is a {raw.family} checkpoint, but {name!r} is a MAE-AST upstream")
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
    # s3prl's expert sets encoder.layerdrop = 0 so hidden states have defined indices, also with -f
    enc = EncoderConfig.from_dict({**enc.to_dict(), "layerdrop": 0.0})
    cfg = UpstreamConfig("mae_ast", enc, frontend, window_frames=None,
                         partial_patch_valid=overrides.get("partial_patch_valid", True),
                         pooling=overrides.get("pooling", "mean"))
    model = Upstream(cfg, name)
    if raw is not None:
        model.encoder.load_state_dict(raw.state, strict=True)
        model.checkpoint_sha256 = raw.sha256
    return model


def _register(name: str, token: str, size: str, default_file: str | None, desc: str) -> None:
    def builder(ckpt=None, **overrides) -> Upstream:
        if default_file is None:
            overrides.setdefault("random_init", ckpt is None)
        return build_mae_ast(name, token, size, default_file, ckpt, **overrides)

    builder.__doc__ = desc
    register_upstream(name, desc)(builder)


_register("mae_ast_patch", "patch", "base", "chunk_patch_75_12LayerEncoder.pt",
          "MAE-AST Patch (16x16, chunked masking 75%), 12-layer encoder")
_register("mae_ast_frame", "frame", "base", "random_frame_75_12LayerEncoder.pt",
          "MAE-AST Frame (128x2, random masking 75%), 12-layer encoder")
_register("mae_ast_patch_mini", "patch", "mini", None, "test-size MAE-AST patch model (D=64, 2 layers)")
_register("mae_ast_frame_mini", "frame", "mini", None, "test-size MAE-AST frame model (D=64, 2 layers)")
