"""ASiT: Local-Global Audio Spectrogram vIsion Transformer (Atito, Awais, Wang, Plumbley, Kittler; 2022).

Reference code: Sara-Ahmed/ASiT (``vision_transformer.py``, ``main_ASiT.py``, ``data_transformations.py``).

A pre-norm ViT with one cls token over 32 kHz log-mels cut or padded to ``num_frames`` (592); time is the
image height, so tokens are time-major. No weights were released; the upstream reads the official
training-checkpoint layout (teacher backbone by default, as DINO-style methods evaluate) and checkpoints
this project pretrains. Long audio is cut into windows of exactly ``num_frames`` fbank frames so the
concatenated tokens stay on one time grid.
"""
from __future__ import annotations

from .checkpoint import CheckpointError, read_checkpoint
from .encoder import EncoderConfig
from .frontend import FbankConfig
from .interface import Upstream, UpstreamConfig
from .registry import check_overrides, register_upstream, resolve_checkpoint

SIZES = {  # vision_transformer.py vit_small / vit_base; 'mini' is a test-size model of this project
    "mini": dict(embed_dim=64, depth=2, num_heads=4),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}
NUM_FRAMES = 592  # 6 s at 32 kHz = 598 frames, cut to 37 x 16
OVERRIDES = {"backbone", "pooling", "random_init", "model_size", "num_frames", "num_heads"}


def encoder_config(size: str, num_frames: int = NUM_FRAMES) -> EncoderConfig:
    return EncoderConfig(**SIZES[size], fshape=16, tshape=16, fstride=16, tstride=16, input_tdim=num_frames,
                         token_order="time_major", num_prefix_tokens=1, pos_embed="learned", norm_first=True,
                         norm_eps=1e-6)


def build_asit(name: str, size: str, ckpt=None, **overrides) -> Upstream:
    check_overrides(name, overrides, OVERRIDES)
    path = resolve_checkpoint(name, ckpt, None, overrides.get("random_init", False))
    raw = (read_checkpoint(path, asit_backbone=overrides.get("backbone", "teacher"), num_heads=overrides.get("num_heads"))
           if path is not None else None)
    if raw is not None:
        if raw.family != "asit":
            raise CheckpointError(f"{raw.path} is a {raw.family} checkpoint, but {name!r} is an ASiT upstream")
        enc = raw.encoder
    else:
        enc = encoder_config(overrides.get("model_size", size), overrides.get("num_frames", NUM_FRAMES))
    frontend = FbankConfig.asit(enc.input_tdim)
    if raw is not None and raw.extra.get("data_mean") is not None:  # the stats the checkpoint was trained with
        frontend.norm_mean, frontend.norm_std = float(raw.extra["data_mean"]), float(raw.extra["data_std"])
    if raw is not None and raw.source == "astbench":
        frontend = raw.extra["upstream_config"].frontend
    cfg = UpstreamConfig("asit", enc, frontend, window_frames=enc.input_tdim, window_mode="exact",
                         pooling=overrides.get("pooling", "mean"))
    model = Upstream(cfg, name)
    if raw is not None:
        model.encoder.load_state_dict(raw.state, strict=True)
        model.checkpoint_sha256 = raw.sha256
    return model


def _register(name: str, size: str, desc: str, random_default: bool) -> None:
    def builder(ckpt=None, **overrides) -> Upstream:
        if random_default:
            overrides.setdefault("random_init", ckpt is None)
        return build_asit(name, size, ckpt, **overrides)

    builder.__doc__ = desc
    register_upstream(name, desc)(builder)


_register("asit_base", "base", "ASiT ViT-B/16 at 32 kHz (no released weights: pass ckpt)", False)
_register("asit_small", "small", "ASiT ViT-S/16 at 32 kHz (no released weights: pass ckpt)", False)
_register("asit_mini", "mini", "test-size ASiT model (D=64, 2 blocks)", True)
