"""Reading and writing checkpoints: each family's official format and this project's own.

Every reader returns a :class:`RawCheckpoint`: the family, the encoder shape *as stored* (pretraining
geometry), the encoder weights renamed to :class:`~upstream.encoder.ASTEncoder`'s names, and the facts the
family builder needs to finish the job (SSAST's fine-tune position adaptation, MAE-AST's front end).
The official formats (``shared/spec/checkpoints.md``) are read by their family's module, which its
:class:`~upstream.registry.FamilySpec` names (``detect_checkpoint`` / ``read_checkpoint``); this module
detects the format, holds what the readers share, and reads and writes this project's own format:

* astbench: ``{"format": "astbench", "version": 2, "upstream_config": ..., "encoder": state_dict, ...}``,
  written by :func:`save_upstream`; it carries the config that rebuilds it. Version 1 also stored
  ``window_frames`` (now derived from the front end's ``target_length``); both versions are read.

Files are read by :func:`upstream.safe_load.load_checkpoint_file`: nothing in them can run code unless the
caller passes ``trust_checkpoint=True``. The format is detected from the top-level keys before any
family-specific check, so a file of another family is always refused as such. Official files are found by
:func:`resolve_checkpoint` in :func:`upstream.download.checkpoint_dir`.
"""
from __future__ import annotations

import hashlib
import inspect
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.files import tmp_path

from .config import UpstreamConfig
from .download import checkpoint_dir, download_hint
from .encoder import EncoderConfig
from .registry import families, get_family
from .safe_load import CheckpointError, load_checkpoint_file

FORMAT_TAG = "astbench"
FORMAT_VERSION = 2  # 2: UpstreamConfig without window_frames (derived from frontend.target_length)


@dataclass
class RawCheckpoint:
    family: str  # a registered family: 'ssast' | 'mae_ast' | 'asit'
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


def read_checkpoint(path: str | os.PathLike, trust_checkpoint: bool | None = None,
                    **options) -> RawCheckpoint:
    """Detect the format of ``path`` and convert it. Raises :class:`CheckpointError` naming the file.

    ``options`` go to the detected family's reader, those it takes (the others are for other families):
    ``num_heads`` (SSAST and ASiT files do not store the head count; inferred from the width, 64-d heads,
    unless given), ``backbone`` (ASiT: ``'teacher'``, the default, or ``'student'``).
    ``trust_checkpoint``: allow full unpickling of a file that needs more than the official formats do
    (see :mod:`upstream.safe_load`); None = the default in force (``upstream.load(..., trust_checkpoint=)``).
    """
    known = {name for f in families() for name in _reader_options(f.read_checkpoint)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"read_checkpoint: unknown option(s) {unknown}; the readers take {sorted(known)}")
    path = Path(path)
    obj = load_checkpoint_file(path, trust_checkpoint)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict or dict")
    family = detect_format(obj, path)  # before any family-specific check, so a wrong family is named as such
    sha = file_sha256(path)
    if family == FORMAT_TAG:
        return _read_astbench(obj, path, sha)
    reader = get_family(family).read_checkpoint
    taken = _reader_options(reader)
    return reader(obj, path, sha, **{k: v for k, v in options.items() if k in taken and v is not None})


def _reader_options(reader) -> list[str]:
    """The keyword options of a family reader ``(obj, path, sha256, *, option=default, ...)``."""
    return [p.name for p in inspect.signature(reader).parameters.values() if p.kind == p.KEYWORD_ONLY]


def detect_format(obj: dict, path: Path) -> str:
    """'astbench' or the family whose official format ``obj`` is, from the top-level keys alone."""
    if obj.get("format") == FORMAT_TAG:
        return FORMAT_TAG
    found = [f.name for f in families() if f.detect_checkpoint(obj)]
    if len(found) > 1:
        raise CheckpointError(f"checkpoint {path} looks like the formats of several families: {found}")
    if found:
        return found[0]
    keys = sorted(map(str, obj))[:8]
    formats = ", ".join(f.checkpoint_format for f in families())
    raise CheckpointError(f"checkpoint {path} is not a recognised format ({formats} or astbench); its first "
                          f"keys are {keys}")


# ------------------------------------------------------------------------------------------ shared by readers
def require_keys(sd: dict, keys: list[str], path: Path, what: str) -> None:
    """CheckpointError naming up to four of ``keys`` missing from ``sd``."""
    missing = [k for k in keys if k not in sd]
    if missing:
        raise CheckpointError(f"{what} checkpoint {path} lacks {len(missing)} expected key(s), "
                              f"e.g. {missing[:4]}")


def timm_block_state(sd: dict, src_prefix: str, depth: int, path: Path) -> dict:
    """timm-style block keys (SSAST, ASiT) carry over unchanged."""
    names = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
             "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
             "mlp.fc2.weight", "mlp.fc2.bias"]
    keys = [f"{src_prefix}blocks.{i}.{n}" for i in range(depth) for n in names]
    require_keys(sd, keys, path, "transformer")
    return {f"blocks.{i}.{n}": sd[f"{src_prefix}blocks.{i}.{n}"] for i in range(depth) for n in names}


def block_depth(sd: dict, prefix: str) -> int:
    """The number of blocks ``prefix<i>.`` in ``sd``; they must be numbered 0..depth-1."""
    ids = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if not ids or ids != set(range(max(ids) + 1)):
        raise CheckpointError(f"block keys under {prefix!r} are missing or not contiguous: {sorted(ids)}")
    return max(ids) + 1


def infer_num_heads(D: int, num_heads: int | None, path: Path) -> int:
    """``num_heads``, or D / 64 (DeiT / ``vit_small`` / ``vit_base`` all use 64-d heads)."""
    heads = num_heads or max(1, D // 64)
    if D % heads:
        raise CheckpointError(f"checkpoint {path}: width {D} is not divisible by num_heads={heads}")
    return heads


def check_sinusoid_table(pe: torch.Tensor, D: int, path: Path) -> torch.Tensor:
    """MAE-AST's stored ``enc_sine_pos_embed.pe`` ``(1, L, D)`` as a float32 ``(L, D)`` table, once it is
    known to be ``SinusoidalPositionalEncoding``'s: ``pe[n, 2i] = sin(n w_i)``, ``pe[n, 2i+1] = cos(n w_i)``,
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
            f"{worst[1]} it is {worst[2]:.3g} away, float rounding explains {worst[3]:.3g}); this file was "
            f"not made by MAE-AST's SinusoidalPositionalEncoding")
    return table



# ---------------------------------------------------------------------------------------------- astbench
def _read_astbench(obj: dict, path: Path, sha: str) -> RawCheckpoint:
    if obj.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} was written by a newer astbench (format v{obj['version']})")
    try:  # a version-1 config also holds window_frames: from_dict checks it against frontend.target_length
        cfg = UpstreamConfig.from_dict(obj["upstream_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: its stored upstream_config is invalid: {e}") from None
    extra = {"upstream_config": cfg, **obj.get("extra", {})}
    if obj.get("sincos_table") is not None:  # an MAE-AST upstream built from an official file keeps its table
        extra["sincos_table"] = check_sinusoid_table(obj["sincos_table"][None], cfg.encoder.embed_dim, path)
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


# ---------------------------------------------------------------------------------------------- lookup
def resolve_checkpoint(name: str, ckpt, default_file: str | None, random_init: bool):
    """The checkpoint to build ``name`` from: ``ckpt``, else ``default_file`` in
    :func:`~upstream.download.checkpoint_dir`, else ``None`` when ``random_init`` (a from-scratch baseline).
    Raises with instructions otherwise."""
    if ckpt is not None:
        if random_init:
            raise ValueError(f"upstream {name!r}: give either ckpt or random_init=True, not both")
        return ckpt
    if random_init:
        return None
    if default_file:
        path = checkpoint_dir() / default_file
        if path.exists():
            return path
        raise FileNotFoundError(
            f"upstream {name!r} needs its checkpoint {default_file!r}: place it at {path} (or set "
            f"ASTBENCH_CHECKPOINTS), pass ckpt=/--ckpt with its path, or use random_init=True (command line: "
            f"-o upstream_overrides.random_init=true) for an untrained model{download_hint(default_file)}"
        )
    raise FileNotFoundError(f"upstream {name!r} has no released checkpoint: pass ckpt=/--ckpt (e.g. one "
                            f"pretrained with run_pretrain.py) or random_init=True (command line: "
                            f"-o upstream_overrides.random_init=true)")
