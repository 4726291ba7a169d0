"""Reading and writing checkpoints: the three official formats and this project's own.

Every reader returns a :class:`RawCheckpoint`: the family, the encoder shape *as stored* (pretraining
geometry), the encoder weights renamed to :class:`~upstream.encoder.ASTEncoder`'s names, and the facts the
family builder needs to finish the job (SSAST's fine-tune position adaptation, MAE-AST's front end).
Formats (``shared/spec/checkpoints.md``):

* SSAST ``.pth``: bare state dict of ``nn.DataParallel(ASTModel)``, every key ``module.*``; model size
  from the embedding width (heads = D / 64), depth from the block keys, patch shape from the conv weight.
* MAE-AST ``.pt``: a fairseq ``Trainer.state_dict()``; shapes from ``cfg['model']`` / ``cfg['task']`` (plain
  dict or omegaconf), weights in ``model`` with no prefix, separate q/k/v projections.
* ASiT ``checkpoint.pth``: ``main_ASiT.py``'s ``save_dict`` with ``teacher`` (keys ``backbone.*``) and
  ``student`` (``module.backbone.*``); the teacher backbone is the default, as DINO-style methods evaluate.
* astbench: ``{"format": "astbench", "upstream_config": ..., "encoder": state_dict, ...}``, written by
  :func:`save_upstream`; it carries the config that rebuilds it.

Files are read by :func:`upstream.safe_load.load_checkpoint_file`: nothing in them can run code unless the
caller passes ``trust_checkpoint=True``. The format is detected from the top-level keys before any
family-specific check, so a file of another family is always refused as such.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.files import tmp_path
from .encoder import EncoderConfig
from .safe_load import CheckpointError, load_checkpoint_file, plain_config
from .tokenizer import convert_patch_weight

FORMAT_TAG = "astbench"
FORMAT_VERSION = 1


@dataclass
class RawCheckpoint:
    family: str  # 'ssast' | 'mae_ast' | 'asit'
    source: str  # 'official' | 'astbench'
    path: str
    sha256: str
    encoder: EncoderConfig  # as stored (pretraining geometry for SSAST)
    state: dict  # ASTEncoder state dict
    extra: dict = field(default_factory=dict)  # family facts (p_input_tdim, frontend, upstream config, ...)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_checkpoint(path: str | os.PathLike, asit_backbone: str = "teacher", num_heads: int | None = None,
                    trust_checkpoint: bool | None = None) -> RawCheckpoint:
    """Detect the format of ``path`` and convert it. Raises :class:`CheckpointError` naming the file.

    ``num_heads``: SSAST and ASiT files do not store the head count; it is inferred from the width (DeiT /
    ``vit_small`` / ``vit_base`` all use 64-d heads) unless given here.
    ``trust_checkpoint``: allow full unpickling of a file that needs more than the official formats do
    (see :mod:`upstream.safe_load`); None = the default in force (``upstream.load(..., trust_checkpoint=)``).
    """
    path = Path(path)
    obj = load_checkpoint_file(path, trust_checkpoint)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict or dict")
    family = detect_format(obj, path)  # before any family-specific check, so a wrong family is named as such
    sha = file_sha256(path)
    if family == "astbench":
        return _read_astbench(obj, path, sha)
    if family == "mae_ast":
        return _read_mae_ast(obj, path, sha)
    if family == "asit":
        return _read_asit(obj, path, sha, asit_backbone, num_heads)
    return _read_ssast(obj, path, sha, num_heads)


def detect_format(obj: dict, path: Path) -> str:
    """'astbench', 'mae_ast', 'asit' or 'ssast', from the top-level keys alone."""
    if obj.get("format") == FORMAT_TAG:
        return "astbench"
    if "cfg" in obj and "model" in obj:
        return "mae_ast"
    if "teacher" in obj and "student" in obj:
        return "asit"
    if any(isinstance(k, str) and k.startswith("module.v.") for k in obj):
        return "ssast"
    if any(isinstance(k, str) and k.startswith("v.") for k in obj):
        raise CheckpointError(
            f"checkpoint {path} looks like an SSAST state dict without the 'module.' prefix; the official "
            f"files are saved from nn.DataParallel and every key starts with 'module.'"
        )
    keys = sorted(map(str, obj))[:8]
    raise CheckpointError(
        f"checkpoint {path} is not a recognised format (SSAST .pth, MAE-AST fairseq .pt, ASiT checkpoint.pth "
        f"or astbench); its first keys are {keys}"
    )


def _require(sd: dict, keys: list[str], path: Path, what: str) -> None:
    missing = [k for k in keys if k not in sd]
    if missing:
        raise CheckpointError(f"{what} checkpoint {path} lacks {len(missing)} expected key(s), e.g. {missing[:4]}")


def _block_state(sd: dict, src_prefix: str, depth: int, path: Path) -> dict:
    """timm-style block keys (SSAST, ASiT) carry over unchanged."""
    names = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
             "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
             "mlp.fc2.weight", "mlp.fc2.bias"]
    _require(sd, [f"{src_prefix}blocks.{i}.{n}" for i in range(depth) for n in names], path, "transformer")
    return {f"blocks.{i}.{n}": sd[f"{src_prefix}blocks.{i}.{n}"] for i in range(depth) for n in names}


def _depth(sd: dict, prefix: str) -> int:
    ids = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if not ids or ids != set(range(max(ids) + 1)):
        raise CheckpointError(f"block keys under {prefix!r} are missing or not contiguous: {sorted(ids)}")
    return max(ids) + 1


# ---------------------------------------------------------------------------------------------- SSAST
def _heads(D: int, num_heads: int | None, path: Path) -> int:
    heads = num_heads or max(1, D // 64)
    if D % heads:
        raise CheckpointError(f"checkpoint {path}: width {D} is not divisible by num_heads={heads}")
    return heads


def _read_ssast(sd: dict, path: Path, sha: str, num_heads: int | None = None) -> RawCheckpoint:
    _require(sd, ["module.v.cls_token", "module.v.pos_embed", "module.v.patch_embed.proj.weight",
                  "module.v.norm.weight", "module.p_input_fdim", "module.p_input_tdim"], path, "SSAST")
    w = sd["module.v.patch_embed.proj.weight"]  # (D, 1, fshape, tshape)
    D, fshape, tshape = w.shape[0], w.shape[2], w.shape[3]
    depth = _depth(sd, "module.v.blocks.")
    p_fdim, p_tdim = int(sd["module.p_input_fdim"]), int(sd["module.p_input_tdim"])
    p_f, p_t = (p_fdim - fshape) // fshape + 1, (p_tdim - tshape) // tshape + 1
    has_dist = "module.v.dist_token" in sd
    P = 2 if has_dist else 1
    if sd["module.v.pos_embed"].shape[1] != P + p_f * p_t:
        raise CheckpointError(
            f"SSAST checkpoint {path}: pos_embed has {sd['module.v.pos_embed'].shape[1]} rows, expected "
            f"{P} + {p_f}x{p_t} for p_input {p_fdim}x{p_tdim} with {fshape}x{tshape} patches"
        )
    enc = EncoderConfig(embed_dim=D, depth=depth, num_heads=_heads(D, num_heads, path), fshape=fshape, tshape=tshape,
                        fstride=fshape, tstride=tshape, input_fdim=p_fdim, input_tdim=p_tdim,
                        token_order="freq_major", num_prefix_tokens=P, pos_embed="learned")
    prefix = [sd["module.v.cls_token"]] + ([sd["module.v.dist_token"]] if has_dist else [])
    state = {
        "prefix_tokens": torch.cat(prefix, dim=1),
        "pos_embed": sd["module.v.pos_embed"],
        "patch_embed.proj.weight": convert_patch_weight(w, "ssast", fshape, tshape),
        "patch_embed.proj.bias": sd["module.v.patch_embed.proj.bias"],
        "norm.weight": sd["module.v.norm.weight"], "norm.bias": sd["module.v.norm.bias"],
        **_block_state(sd, "module.v.", depth, path),
    }
    extra = {"p_input_fdim": p_fdim, "p_input_tdim": p_tdim, "p_f_dim": p_f, "p_t_dim": p_t}
    return RawCheckpoint("ssast", "official", str(path), sha, enc, state, extra)


# ---------------------------------------------------------------------------------------------- MAE-AST
MAE_AST_MODEL_KEYS = ("encoder_embed_dim", "encoder_layers", "encoder_attention_heads", "encoder_ffn_embed_dim",
                      "ast_kernel_size_chan", "ast_kernel_size_time", "ast_kernel_stride_chan",
                      "ast_kernel_stride_time")


def _cfg_int(section: dict, key: str, path: Path, default: int | None = None) -> int:
    value = section.get(key, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"MAE-AST checkpoint {path}: cfg['model'][{key!r}] is {value!r}, "
                              f"not an integer") from None


def _check_sinusoid(pe: torch.Tensor, D: int, path: Path) -> torch.Tensor:
    """MAE-AST's stored ``enc_sine_pos_embed.pe`` ``(1, L, D)`` as a float32 ``(L, D)`` table, once it is known
    to be ``SinusoidalPositionalEncoding``'s: ``pe[n, 2i] = sin(n w_i)``, ``pe[n, 2i+1] = cos(n w_i)``,
    ``w_i = 10000^(-2i/D)``.

    The encoder uses the stored table as it is (exact on any machine), so this check only has to tell a
    sinusoid from anything else, never to reproduce float rounding. The file's table was computed in float32
    on its authors' machine, whose ``exp`` may round ``w_i`` one ulp away from ours (two x86 CPUs give tables
    3e-5 apart at position 1024); the float32 argument ``n w_i`` then moves by about ``n * 1.2e-7`` and
    ``sin`` carries that over. Tolerance per position: ``1e-3 + 4 * eps32 * n`` plus the stored dtype's
    rounding (0.024 at the released length 48000). Other frequencies, another layout or learned values are
    off by O(1).
    """
    if pe.dim() != 3 or pe.shape[0] != 1 or pe.shape[2] != D or not pe.is_floating_point():
        raise CheckpointError(f"MAE-AST checkpoint {path}: enc_sine_pos_embed.pe is a {tuple(pe.shape)} "
                              f"{pe.dtype} tensor, expected float (1, max_token_length, {D})")
    table = pe[0].float().contiguous()
    if not bool(torch.isfinite(table).all()):
        raise CheckpointError(f"MAE-AST checkpoint {path}: enc_sine_pos_embed.pe holds NaN or Inf")
    w = torch.exp(torch.arange(0, D, 2, dtype=torch.float64) * (-math.log(10000.0) / D))  # (ceil(D/2),)
    slack = 1e-3 + torch.finfo(pe.dtype).eps
    worst = (0.0, 0, 0.0, 0.0)  # (diff / tolerance, position, diff, tolerance)
    for start in range(0, table.shape[0], 4096):  # chunks keep the reference small
        n = torch.arange(start, min(start + 4096, table.shape[0]), dtype=torch.float64)  # (R,)
        arg = (n[:, None] * w).float()  # (R, ceil(D/2)); exact argument, rounded once (well inside tolerance)
        rows = table[start:start + len(n)]
        diff = torch.maximum((rows[:, 0::2] - torch.sin(arg)).abs().amax(1),
                             (rows[:, 1::2] - torch.cos(arg[:, : D // 2])).abs().amax(1))  # (R,)
        tol = slack + 4 * torch.finfo(torch.float32).eps * n.float()
        i = int((diff / tol).argmax())
        if float(diff[i] / tol[i]) > worst[0]:
            worst = (float(diff[i] / tol[i]), start + i, float(diff[i]), float(tol[i]))
    if worst[0] > 1:
        raise CheckpointError(
            f"MAE-AST checkpoint {path}: enc_sine_pos_embed.pe is not the standard sinusoid (at position "
            f"{worst[1]} it is {worst[2]:.3g} away, float rounding explains {worst[3]:.3g}); this file was not "
            f"made by MAE-AST's SinusoidalPositionalEncoding")
    return table


def _read_mae_ast(obj: dict, path: Path, sha: str) -> RawCheckpoint:
    cfg = plain_config(obj["cfg"])  # a plain dict, or omegaconf's DictConfig as older fairseq pickled it
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or not isinstance(cfg.get("task"), dict):
        raise CheckpointError(f"fairseq checkpoint {path} has no cfg['model'] / cfg['task'] dicts")
    m, t = cfg["model"], cfg["task"]
    if m.get("_name") not in (None, "mae_ast"):
        raise CheckpointError(f"fairseq checkpoint {path} is a {m.get('_name')!r} model, not 'mae_ast'")
    missing = [k for k in MAE_AST_MODEL_KEYS if k not in m]
    if missing:
        raise CheckpointError(f"MAE-AST checkpoint {path}: cfg['model'] lacks {', '.join(missing)} (needed for "
                              f"the encoder's shape)")
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
        raise CheckpointError(f"MAE-AST checkpoint {path}: 'model' holds a {type(sd).__name__}, not a state dict")
    D, depth = _cfg_int(m, "encoder_embed_dim", path), _cfg_int(m, "encoder_layers", path)
    kc, kt = _cfg_int(m, "ast_kernel_size_chan", path), _cfg_int(m, "ast_kernel_size_time", path)
    sc, st = _cfg_int(m, "ast_kernel_stride_chan", path), _cfg_int(m, "ast_kernel_stride_time", path)
    pre = "encoder.layers."
    _require(sd, ["post_extract_proj.weight", "batch_norm.running_mean", "encoder.layer_norm.weight",
                  f"{pre}{depth - 1}.fc2.weight"], path, "MAE-AST")
    if _depth(sd, pre) != depth:
        raise CheckpointError(f"MAE-AST checkpoint {path}: cfg says {depth} encoder layers, weights hold "
                              f"{_depth(sd, pre)}")
    max_tokens = _cfg_int(m, "max_token_length", path, 48000)
    table = sd.get("enc_sine_pos_embed.pe")  # (1, max_token_length, D)
    if table is not None:
        table = _check_sinusoid(table, D, path)
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
    state[f"{ln}.weight"], state[f"{ln}.bias"] = sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"]
    _require(sd, [f"{pre}{i}.{k}.{wb}" for i in range(depth) for wb in ("weight", "bias") for k in
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


# ---------------------------------------------------------------------------------------------- ASiT
ASIT_ARCH_HEADS = {"vit_small": 6, "vit_base": 12}  # ASiT vision_transformer.py factories


def _read_asit(obj: dict, path: Path, sha: str, backbone: str, num_heads: int | None = None) -> RawCheckpoint:
    if backbone not in ("teacher", "student"):
        raise ValueError(f"asit backbone must be 'teacher' or 'student', got {backbone!r}")
    sd = obj[backbone]
    prefix = "module.backbone." if backbone == "student" else "backbone."
    if backbone == "student" and not any(k.startswith(prefix) for k in sd):
        prefix = "backbone."
    _require(sd, [f"{prefix}cls_token", f"{prefix}pos_embed", f"{prefix}patch_embed.proj.weight",
                  f"{prefix}norm.weight"], path, f"ASiT ({backbone})")
    w = sd[f"{prefix}patch_embed.proj.weight"]  # (D, 1, 16, 16) over (B, 1, T, F)
    D, kt, kf = w.shape[0], w.shape[2], w.shape[3]
    depth = _depth(sd, f"{prefix}blocks.")
    pos = sd[f"{prefix}pos_embed"]
    n_f = 128 // kf
    if (pos.shape[1] - 1) % n_f:
        raise CheckpointError(f"ASiT checkpoint {path}: pos_embed rows {pos.shape[1]} - 1 not a multiple of {n_f}")
    num_frames = kt * (pos.shape[1] - 1) // n_f
    args = obj.get("args")
    args = vars(args) if args is not None and not isinstance(args, dict) else (args or {})
    if num_heads is None and args.get("arch") in ASIT_ARCH_HEADS:
        num_heads = ASIT_ARCH_HEADS[args["arch"]]
    elif num_heads is None:
        warnings.warn(f"ASiT checkpoint {path}: arch {args.get('arch')!r} does not fix the head count; assuming "
                      f"{max(1, D // 64)} (64-d heads). Pass num_heads=... if it was trained otherwise.")
    enc = EncoderConfig(embed_dim=D, depth=depth, num_heads=_heads(D, num_heads, path), fshape=kf, tshape=kt,
                        fstride=kf, tstride=kt, input_fdim=128, input_tdim=num_frames, token_order="time_major",
                        num_prefix_tokens=1, pos_embed="learned")
    state = {
        "prefix_tokens": sd[f"{prefix}cls_token"], "pos_embed": pos,
        "patch_embed.proj.weight": convert_patch_weight(w, "asit", kf, kt),
        "patch_embed.proj.bias": sd[f"{prefix}patch_embed.proj.bias"],
        "norm.weight": sd[f"{prefix}norm.weight"], "norm.bias": sd[f"{prefix}norm.bias"],
        **_block_state(sd, prefix, depth, path),
    }
    extra = {"num_frames": num_frames, "backbone": backbone, "epoch": obj.get("epoch"),
             "data_mean": args.get("data_mean"), "data_std": args.get("data_std")}
    return RawCheckpoint("asit", "official", str(path), sha, enc, state, extra)


# ---------------------------------------------------------------------------------------------- astbench
def _read_astbench(obj: dict, path: Path, sha: str) -> RawCheckpoint:
    from .interface import UpstreamConfig

    if obj.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} was written by a newer astbench (format v{obj['version']})")
    try:
        cfg = UpstreamConfig.from_dict(obj["upstream_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: its stored upstream_config is invalid: {e}") from None
    extra = {"upstream_config": cfg, **obj.get("extra", {})}
    if obj.get("sincos_table") is not None:  # an MAE-AST upstream built from an official file keeps its table
        extra["sincos_table"] = _check_sinusoid(obj["sincos_table"][None], cfg.encoder.embed_dim, path)
    return RawCheckpoint(cfg.family, "astbench", str(path), sha, cfg.encoder, obj["encoder"], extra)


def save_upstream(upstream, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Write an upstream's encoder weights and config atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT_TAG, "version": FORMAT_VERSION, "upstream_config": upstream.cfg.to_dict(),
               "encoder": {k: v.detach().cpu() for k, v in upstream.encoder.state_dict().items()},
               "extra": dict(extra or {})}
    table = getattr(upstream.encoder, "sincos_table", None)  # MAE-AST: the official file's position table
    if table is not None:
        payload["sincos_table"] = table.detach().cpu()
    tmp = tmp_path(path)  # unique per writer
    torch.save(payload, tmp)
    os.replace(tmp, path)
