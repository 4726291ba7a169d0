"""SSAST: Self-Supervised Audio Spectrogram Transformer (Gong, Lai, Chung, Glass; AAAI 2022).

Reference code: YuanGongND/ssast (``src/models/ast_models.py``) and s3prl's ``upstream/ssast`` expert.

The backbone is a DeiT ViT with two leading tokens (cls + dist), pre-norm blocks and a learned position
table over a frequency-major patch grid. Upstream features follow s3prl: 1 s windows, fine-tuning strides
(patch 10/10, frame 128/1), the position table adapted from the 128x1024 pretraining grid by SSAST's own
centre-cut / bilinear rule, and every block's output (before the final norm) as a hidden state.
``window_mode='utterance'`` gives SSAST's own pipelines instead (PSLA fine-tuning, its own SUPERB upstream):
one input per clip, padded or cut, token features; the downstream protocols
(``configs/protocols/ssast.yaml``) say which task uses which.
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
    infer_num_heads,
    read_checkpoint,
    require_keys,
    resolve_checkpoint,
    timm_block_state,
)
from .config import UpstreamConfig
from .download import OfficialCheckpoint, dropbox_url
from .encoder import ASTEncoder, EncoderConfig
from .frontend import FbankConfig
from .interface import Upstream
from .layers import ssast_adapt_pos_embed
from .masking import gather_tokens, masked_indices, ssast_mask
from .objective import Objective, block_train_flops, info_nce, linear_flops, override_encoder
from .registry import FamilySpec, PretrainShortcut, check_overrides, register_family, register_upstream
from .tokenizer import convert_patch_weight, patchify

# ------------------------------------------------------------------------------------------ sizes
SIZES = {  # DeiT backbones of ast_models.py; 'mini' is a test-size model of this project
    "mini": dict(embed_dim=64, depth=2, num_heads=4),
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}
# pretraining patches (no overlap) and s3prl's fine-tuning strides (s3prl upstream/ssast/expert.py)
TOKENS = {
    "patch": dict(fshape=16, tshape=16, fstride=10, tstride=10),
    "frame": dict(fshape=128, tshape=2, fstride=128, tstride=1),
}
PRETRAIN_LENGTH = 1024  # fbank frames of every released model's pretraining input (its p_input_tdim)
S3PRL_WINDOW = 100  # s3prl's expert: window_secs=1.0, i.e. 1 s windows of 100 fbank frames
FRONTEND_OVERRIDES = ("norm_mean", "norm_std", "remove_mean_first", "pad_then_normalise")  # of FbankConfig
OVERRIDES = {"fshape", "tshape", "fstride", "tstride", "target_length", "model_size", "pooling",
             "random_init", "num_heads", "window_mode", *FRONTEND_OVERRIDES}
WINDOW_MODES = {  # window_mode override -> the pipeline it reproduces
    "s3prl": "s3prl's ssast expert: 1 s windows (target_length 100), features as (time, n_f * D) rows",
    "utterance": "SSAST's own pipelines: the whole clip padded/cut to target_length, token features "
                 "(PSLA fine-tuning in src/run.py; its SUPERB upstream src/finetune/superb/upstream/ast)",
}


def pretrain_encoder_config(token: str, size: str, target_length: int = PRETRAIN_LENGTH) -> EncoderConfig:
    """The encoder as SSAST pretrains it: non-overlapping patches over 128 x ``target_length`` frames."""
    t = TOKENS[token]
    return EncoderConfig(**SIZES[size], fshape=t["fshape"], tshape=t["tshape"], fstride=t["fshape"],
                         tstride=t["tshape"], input_tdim=target_length, token_order="freq_major",
                         num_prefix_tokens=2, pos_embed="learned", norm_first=True, norm_eps=1e-6)


def build_ssast(name: str, token: str, size: str, default_file: str | None, ckpt=None,
                **overrides) -> Upstream:
    """SSAST upstream at s3prl's settings, from an official ``.pth``, an astbench checkpoint or scratch.

    ``window_mode='utterance'`` gives SSAST's own pipelines instead (one padded/cut input per clip); the
    front-end overrides ``norm_mean``, ``norm_std``, ``remove_mean_first``, ``pad_then_normalise`` set
    what its recipes set (``FbankConfig`` fields; the downstream protocols use them).
    """
    check_overrides(name, overrides, OVERRIDES)
    window_mode = overrides.get("window_mode", "s3prl")
    if window_mode not in WINDOW_MODES:
        raise ValueError(f"{name}: window_mode must be one of {sorted(WINDOW_MODES)}, got {window_mode!r}")
    geo = {**TOKENS[token],
           **{k: overrides[k] for k in ("fshape", "tshape", "fstride", "tstride") if k in overrides}}
    path = resolve_checkpoint(name, ckpt, default_file, overrides.get("random_init", False))
    raw = read_checkpoint(path, num_heads=overrides.get("num_heads")) if path is not None else None
    # A checkpoint this project wrote keeps its front end (statistics, input length); official files get
    # s3prl's (AudioSet statistics, 1 s windows). An explicit length still wins.
    stored = raw.extra["upstream_config"].frontend if raw is not None and raw.source == "astbench" else None
    target = stored.target_length if stored is not None and stored.target_length else S3PRL_WINDOW
    target = overrides.get("target_length", target)
    if raw is not None:
        if raw.family != "ssast":
            raise CheckpointError(f"{raw.path} is a {raw.family} checkpoint, but {name!r} is an SSAST "
                                  f"upstream")
        pre = raw.encoder
        if (pre.fshape, pre.tshape) != (geo["fshape"], geo["tshape"]):
            raise CheckpointError(
                f"{raw.path} has {pre.fshape}x{pre.tshape} (fshape x tshape) patches, but {name!r} expects "
                f"{geo['fshape']}x{geo['tshape']}; use the {'frame' if pre.fshape == 128 else 'patch'} "
                f"upstream"
            )
        if "model_size" in overrides and SIZES[overrides["model_size"]]["embed_dim"] != pre.embed_dim:
            raise CheckpointError(f"{raw.path} holds a D={pre.embed_dim} model, not "
                                  f"model_size={overrides['model_size']!r}")
    else:
        pre = pretrain_encoder_config(token, overrides.get("model_size", size))
    enc_cfg = EncoderConfig.from_dict({**pre.to_dict(), **geo, "input_tdim": target})  # the one length
    frontend = FbankConfig.ssast_s3prl(target) if stored is None else replace(stored, target_length=target)
    frontend = replace(frontend, **{k: overrides[k] for k in FRONTEND_OVERRIDES if k in overrides})
    cfg = UpstreamConfig("ssast", enc_cfg, frontend, window_mode=window_mode,
                         pooling=overrides.get("pooling", "mean"))
    model = Upstream(cfg, name)
    if raw is not None:
        load_ssast_weights(model.encoder, raw)
        model.checkpoint_sha256 = raw.sha256
    return model


def load_ssast_weights(encoder: ASTEncoder, raw: RawCheckpoint) -> None:
    """Official fine-tune load path (ast_models.py): same conv weight at the new stride, position table
    centre-cut / interpolated from the pretraining grid to the encoder's grid."""
    state = dict(raw.state)
    pre, P = raw.encoder, raw.encoder.num_prefix_tokens
    if P != encoder.num_prefix_tokens:
        raise CheckpointError(f"{raw.path} has {P} leading tokens; this encoder expects "
                              f"{encoder.num_prefix_tokens}")
    p_f, p_t = pre.grid
    f_dim, t_dim = encoder.cfg.grid
    strides = (encoder.cfg.fstride, encoder.cfg.tstride)
    if (p_f, p_t) != (f_dim, t_dim) or (pre.fstride, pre.tstride) != strides:
        state["pos_embed"] = ssast_adapt_pos_embed(state["pos_embed"], P, p_f, p_t, f_dim, t_dim)
    encoder.load_state_dict(state, strict=True)


def is_official_checkpoint(obj: dict) -> bool:
    """An ``nn.DataParallel(ASTModel)`` state dict (keys ``module.v.*``), or one saved without DataParallel
    (``v.*``), which :func:`read_official_checkpoint` refuses by name."""
    return any(isinstance(k, str) and (k.startswith("module.v.") or k.startswith("v.")) for k in obj)


def read_official_checkpoint(sd: dict, path: Path, sha: str, *,
                             num_heads: int | None = None) -> RawCheckpoint:
    """An official SSAST ``.pth``: model size from the embedding width (heads = D / 64 unless given), depth
    from the block keys, patch shape from the conv weight, pretraining grid from ``p_input_{f,t}dim``."""
    if not any(isinstance(k, str) and k.startswith("module.v.") for k in sd):
        raise CheckpointError(
            f"checkpoint {path} looks like an SSAST state dict without the 'module.' prefix; the official "
            f"files are saved from nn.DataParallel and every key starts with 'module.'"
        )
    require_keys(sd, ["module.v.cls_token", "module.v.pos_embed", "module.v.patch_embed.proj.weight",
                  "module.v.norm.weight", "module.p_input_fdim", "module.p_input_tdim"], path, "SSAST")
    w = sd["module.v.patch_embed.proj.weight"]  # (D, 1, fshape, tshape)
    D, fshape, tshape = w.shape[0], w.shape[2], w.shape[3]
    depth = block_depth(sd, "module.v.blocks.")
    p_fdim, p_tdim = int(sd["module.p_input_fdim"]), int(sd["module.p_input_tdim"])
    p_f, p_t = (p_fdim - fshape) // fshape + 1, (p_tdim - tshape) // tshape + 1
    has_dist = "module.v.dist_token" in sd
    P = 2 if has_dist else 1
    if sd["module.v.pos_embed"].shape[1] != P + p_f * p_t:
        raise CheckpointError(
            f"SSAST checkpoint {path}: pos_embed has {sd['module.v.pos_embed'].shape[1]} rows, expected "
            f"{P} + {p_f}x{p_t} for p_input {p_fdim}x{p_tdim} with {fshape}x{tshape} patches"
        )
    enc = EncoderConfig(embed_dim=D, depth=depth, num_heads=infer_num_heads(D, num_heads, path),
                        fshape=fshape, tshape=tshape, fstride=fshape, tstride=tshape, input_fdim=p_fdim,
                        input_tdim=p_tdim, token_order="freq_major", num_prefix_tokens=P, pos_embed="learned")
    prefix = [sd["module.v.cls_token"]] + ([sd["module.v.dist_token"]] if has_dist else [])
    state = {
        "prefix_tokens": torch.cat(prefix, dim=1),
        "pos_embed": sd["module.v.pos_embed"],
        "patch_embed.proj.weight": convert_patch_weight(w, "ssast", fshape, tshape),
        "patch_embed.proj.bias": sd["module.v.patch_embed.proj.bias"],
        "norm.weight": sd["module.v.norm.weight"], "norm.bias": sd["module.v.norm.bias"],
        **timm_block_state(sd, "module.v.", depth, path),
    }
    extra = {"p_input_fdim": p_fdim, "p_input_tdim": p_tdim, "p_f_dim": p_f, "p_t_dim": p_t}
    return RawCheckpoint("ssast", "official", str(path), sha, enc, state, extra)



# ------------------------------------------------------------------------------------------ pretraining
@dataclass
class SSASTPretrainConfig:
    """Masked spectrogram patch modeling (``src/pretrain/run_mask_{patch,frame}.sh``)."""

    token: str = "patch"  # 'patch' (16x16) or 'frame' (128x2); no overlap in pretraining
    size: str = "base"
    mask_patch: int = 400  # masked patches of the 512 (ablations: 100, 250)
    cluster: bool | None = None  # None = the official rule: cluster masking for patches, random for frames
    objective: str = "joint"  # 'joint' | 'discriminative' (mpc) | 'generative' (mpg)
    gen_weight: float = 10.0  # joint loss = nce + gen_weight * mse
    two_pass: bool = True  # official joint step: two forward passes with independently drawn masks
    target_length: int = PRETRAIN_LENGTH  # fbank frames per pretraining clip (10.24 s; official input_tdim)
    norm_mean: float = -4.2677393  # AudioSet + LibriSpeech stats of the released models
    norm_std: float = 4.5689974
    encoder: dict = field(default_factory=dict)  # EncoderConfig fields overriding the size table (e.g. depth)

    def __post_init__(self):
        if self.token not in TOKENS or self.size not in SIZES:
            raise ValueError(f"SSAST token must be in {list(TOKENS)} and size in {list(SIZES)}")
        if self.objective not in ("joint", "discriminative", "generative"):
            raise ValueError(f"SSAST objective must be joint/discriminative/generative, got "
                             f"{self.objective!r}")

    @property
    def num_passes(self) -> int:
        """Encoder passes per step, one mask each: two for the official joint step, else one."""
        return 2 if self.objective == "joint" and self.two_pass else 1


def ssast_patches(fbank: torch.Tensor, fshape: int, tshape: int) -> torch.Tensor:
    """The targets: ``nn.Unfold((fshape, tshape))`` on the ``(B, 1, F, T)`` spectrogram, as ``mpc``/``mpg``
    cut them. (B, T, F) -> (B, N, fshape * tshape); tokens frequency-major, each patch flattened
    frequency-outer / time-inner (element ``tshape * df + dt``), the order the official heads predict."""
    p = patchify(fbank, fshape, tshape, "freq_major")  # (B, N, tshape * fshape), time-outer
    return p.unflatten(-1, (tshape, fshape)).transpose(-1, -2).flatten(-2)


class SSASTObjective(Objective):
    """SSAST pretraining: masked patches replaced by ``mask_embed``; a discriminative head picks each masked
    patch out of the clip's other masked patches (InfoNCE), a generative head regresses it (MSE)."""

    family = "ssast"

    def __init__(self, cfg: SSASTPretrainConfig):
        super().__init__()
        self.cfg = cfg
        enc_cfg = override_encoder(pretrain_encoder_config(cfg.token, cfg.size, cfg.target_length),
                                   cfg.encoder, "ssast")
        self.encoder = ASTEncoder(enc_cfg)
        D, e = self.encoder.cfg.embed_dim, self.encoder.cfg
        n_f, n_t = e.grid
        if not 0 < cfg.mask_patch <= n_f * n_t:
            raise ValueError(f"mask_patch={cfg.mask_patch} must be in 1..{n_f * n_t} for a {n_f}x{n_t} grid")
        patch_dim = e.fshape * e.tshape
        self.mask_embed = nn.Parameter(nn.init.xavier_normal_(torch.zeros(1, 1, D)))
        self.cpredlayer = nn.Sequential(nn.Linear(D, D), nn.ReLU(), nn.Linear(D, patch_dim))  # discriminative
        self.gpredlayer = nn.Sequential(nn.Linear(D, D), nn.ReLU(), nn.Linear(D, patch_dim))  # generative
        self.frontend = FbankConfig.ssast(cfg.target_length, cfg.norm_mean, cfg.norm_std)
        self.crop_secs = (cfg.target_length + 1.5) / 100  # enough samples for target_length frames

    def upstream_config(self) -> UpstreamConfig:
        """s3prl's SSAST front end with this model's statistics, windows of its pretraining length."""
        e = self.encoder.cfg
        frontend = replace(FbankConfig.ssast_s3prl(e.input_tdim), norm_mean=self.cfg.norm_mean,
                           norm_std=self.cfg.norm_std)
        return UpstreamConfig("ssast", e, frontend)

    def forward(self, fbank: torch.Tensor, num_frames: torch.Tensor | None,
                generator: torch.Generator | None = None, masks: list[torch.Tensor] | None = None):
        """fbank (B, T, F) normalised and padded to ``target_length`` -> (loss, logs).

        ``masks``: one (B, N) bool mask per encoder pass (True = masked, ``mask_patch`` per row,
        frequency-major token ids), e.g. the official ``mask_index`` of a golden fixture; default: drawn from
        ``generator``.
        """
        c, e = self.cfg, self.encoder.cfg
        B = fbank.shape[0]
        # The masks come first: drawing one may wait for the device (cluster_mask checks its count), and
        # nothing of the model is queued yet. The official joint step draws a second, independent mask.
        if masks is None:
            masks = [self.draw_mask(B, generator, fbank.device) for _ in range(c.num_passes)]
        else:
            self._check_masks(masks, B)
        target = ssast_patches(fbank, e.fshape, e.tshape)  # (B, N, p)
        tokens = self.encoder.tokenize(fbank)  # (B, N, D)
        logs = {}
        loss = tokens.new_zeros(())
        if c.objective in ("joint", "discriminative"):  # mpc
            hidden, tgt = self._masked_pass(tokens, target, masks[0])
            nce, acc = info_nce(self.cpredlayer(hidden), tgt, over="predictions")
            loss = loss + nce
            logs.update(nce=nce.detach(), masked_acc=acc)
        if c.objective in ("joint", "generative"):  # mpg, on its own pass unless two_pass is off
            if c.objective == "generative" or len(masks) == 2:
                hidden, tgt = self._masked_pass(tokens, target, masks[-1])
            mse = torch.mean((self.gpredlayer(hidden).float() - tgt.float()) ** 2)
            loss = loss + (c.gen_weight if c.objective == "joint" else 1.0) * mse
            logs.update(mse=mse.detach())
        return loss, logs

    def draw_mask(self, batch: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """(B, N) bool, True = masked: ``mask_patch`` tokens per clip, clustered or uniform."""
        return ssast_mask(batch, self.encoder.cfg.grid, self.cfg.mask_patch, cluster=self.cfg.cluster,
                          generator=generator, device=device)

    def _check_masks(self, masks: list[torch.Tensor], batch: int) -> None:
        n_f, n_t = self.encoder.cfg.grid
        if len(masks) != self.cfg.num_passes:
            raise ValueError(f"SSAST objective {self.cfg.objective!r} (two_pass={self.cfg.two_pass}) takes "
                             f"{self.cfg.num_passes} mask(s), got {len(masks)}")
        for m in masks:
            if m.dtype != torch.bool or tuple(m.shape) != (batch, n_f * n_t):
                raise ValueError(f"SSAST masks must be bool ({batch}, {n_f * n_t}), got {m.dtype} "
                                 f"{tuple(m.shape)}")
            if bool((m.sum(1) != self.cfg.mask_patch).any()):
                raise ValueError(f"every SSAST mask row must mask exactly mask_patch={self.cfg.mask_patch} "
                                 f"tokens")

    def _masked_pass(self, tokens: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
        """One encoder pass with ``mask`` (B, N) -> (hidden states (B, M, D), target patches (B, M, p)) at the
        masked positions, in increasing token order (the losses do not depend on the order)."""
        x = torch.where(mask[..., None], self.mask_embed.to(tokens.dtype), tokens)
        _, x = self.encoder.forward_blocks(self.encoder.add_position(x), indices=[])  # (B, P+N, D), normed
        ids = masked_indices(mask, self.cfg.mask_patch)  # (B, M) masked token ids, increasing
        return gather_tokens(x[:, self.encoder.num_prefix_tokens:], ids), gather_tokens(target, ids)

    def step_flops(self, num_frames: int) -> float:
        """Analytic FLOPs of one training step per clip of ``num_frames`` fbank frames
        (:func:`~upstream.objective.block_train_flops`): patch embedding once; the encoder over all N + 2
        tokens once per pass (two in the two-pass joint step); per pass a prediction head (Linear D->D, Linear
        D->patch) on the M masked tokens and the M x M InfoNCE logits."""
        e, c = self.encoder.cfg, self.cfg
        D, r, patch = e.embed_dim, e.mlp_ratio, e.fshape * e.tshape
        n_f, n_t = self.encoder.grid_for(num_frames)
        N, M = n_f * n_t, c.mask_patch
        head = linear_flops(M, D, D) + linear_flops(M, D, patch) + 3 * 2 * M * M * patch
        encoder = block_train_flops(N + e.num_prefix_tokens, D, e.depth, r)
        return linear_flops(N, patch, D) + c.num_passes * (encoder + head)


# ------------------------------------------------------------------------------------------ registry
def _register(name: str, token: str, size: str, default_file: str | None, desc: str) -> None:
    def builder(ckpt=None, **overrides) -> Upstream:
        if default_file is None:  # test-size models have no release: untrained unless a ckpt is given
            overrides.setdefault("random_init", ckpt is None)
        return build_ssast(name, token, size, default_file, ckpt, **overrides)

    builder.__doc__ = desc
    register_upstream(name, desc, family="ssast")(builder)


for _tok in ("patch", "frame"):
    for _n in (100, 250, 400):
        _register(f"ssast_{_tok}_{_n}", _tok, "base", f"SSAST-Base-{_tok.title()}-{_n}.pth",
                  f"SSAST-Base-{_tok.title()} pretrained with {_n} masked {_tok}es (AudioSet + LibriSpeech)")
    _register(f"ssast_{_tok}_tiny", _tok, "tiny", f"SSAST-Tiny-{_tok.title()}-400.pth",
              f"SSAST-Tiny-{_tok.title()}-400 (D=192, 12 blocks, 3 heads)")
    _register(f"ssast_{_tok}_mini", _tok, "mini", None,
              f"test-size SSAST {_tok} model (D=64, 2 blocks); random init unless ckpt is given")
_register("ssast_patch_small", "patch", "small", "SSAST-Small-Patch-400.pth", "SSAST-Small-Patch-400 (D=384)")

_README = "YuanGongND/ssast README, 'Pretrained Models'"
_ABLATION = "YuanGongND/ssast README, 'Pretrained Models', ablation study table"


def _release(name: str, file: str, key: str, published: str = _README, url_file: str = "", note: str = ""):
    return OfficialCheckpoint(name, file, (dropbox_url(key, url_file or file),), published, note=note)


RELEASES = (  # Dropbox direct links as the README publishes them
    _release("ssast_patch_400", "SSAST-Base-Patch-400.pth", "ewrzpco95n9jdz6"),
    _release("ssast_frame_400", "SSAST-Base-Frame-400.pth", "nx6nl4d4bl71sm8"),
    _release("ssast_patch_250", "SSAST-Base-Patch-250.pth", "mxrm9qog6aj8hif"),
    _release("ssast_frame_250", "SSAST-Base-Frame-250.pth", "4e6l7ulhwrfoana"),
    _release("ssast_patch_small", "SSAST-Small-Patch-400.pth", "i24w446rl9pkf05"),
    _release("ssast_patch_tiny", "SSAST-Tiny-Patch-400.pth", "fkbtf78y94113wz"),
    _release("ssast_frame_tiny", "SSAST-Tiny-Frame-400.pth", "rx7g60ruzawffzv"),
    _release("ssast_patch_100", "SSAST-Base-Patch-100.pth", "0oyrtfbjzkwho2p", _ABLATION,
             "audio_model_100m.pth", "published as audio_model_100m.pth (ablation 1, 100 masked patches)"),
    _release("ssast_patch_400_disc", "audio_model_dis.pth", "znuzgwf2zvrpjkr", _ABLATION,
             note="ablation 2, discriminative objective only; load with -u ssast_patch_400 --ckpt"),
    _release("ssast_patch_400_gen", "audio_model_gen.pth", "u6ws5fjrid10x4p", _ABLATION,
             note="ablation 3, generative objective only; load with -u ssast_patch_400 --ckpt"),
    _release("ssast_patch_400_as20k", "audio_model_as20k.pth", "y6x2ck2ca3tb7d9", _ABLATION,
             note="ablation 4, pretrained on AudioSet-20K; load with -u ssast_patch_400 --ckpt"),
    _release("ssast_patch_400_as2m", "audio_model_as.pth", "m9p782df3faql1q", _ABLATION,
             note="ablation 5, pretrained on AudioSet-2M; load with -u ssast_patch_400 --ckpt"),
    _release("ssast_patch_400_librispeech", "audio_model_librispeech.pth", "f4bn2qelu3m8ksu", _ABLATION,
             note="ablation 6, pretrained on LibriSpeech 960 h; load with -u ssast_patch_400 --ckpt"),
)

FAMILY = register_family(FamilySpec(
    name="ssast", title="SSAST", module=__name__,
    objective=SSASTObjective, objective_config=SSASTPretrainConfig,
    frontend=FbankConfig.ssast_s3prl, overrides=frozenset(OVERRIDES),
    checkpoint_format="SSAST .pth", detect_checkpoint=is_official_checkpoint,
    read_checkpoint=read_official_checkpoint,
    shortcuts=tuple(PretrainShortcut(f"ssast_{tok}", {"family": "ssast", "token": tok},
                                     f"configs/pretrain/ssast_{tok}_400.yaml",
                                     f"configs/pretrain/ssast_{tok}_mini.yaml", f"ssast_{tok}_mini")
                    for tok in ("patch", "frame")),
    upstream_prefix=lambda cfg: f"ssast_{cfg.token}",
    releases=RELEASES,
))
