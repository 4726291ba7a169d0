"""ASiT: Audio Spectrogram vIsion Transformer for General Audio Representation (Atito et al.; arXiv 2022, v1).

Reference code: Sara-Ahmed/ASiT (``vision_transformer.py``, ``main_ASiT.py``, ``data_transformations.py``).

A pre-norm ViT with one cls token over 32 kHz log-mels cut or padded to ``target_length`` frames (592; the
official ``num_frames``); time is the
image height, so tokens are time-major. No weights were released; the upstream reads the official
training-checkpoint layout (teacher backbone by default, as DINO-style methods evaluate) and checkpoints
this project pretrains. Long audio is cut into windows of exactly ``target_length`` fbank frames so the
concatenated tokens stay on one time grid.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
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
from .corruption import asit_corrupt
from .encoder import ASTEncoder, EncoderConfig
from .frontend import FbankConfig
from .interface import Upstream, upstream_with_weights
from .objective import Objective, block_train_flops, dino_param_groups, linear_flops, override_encoder
from .registry import FamilySpec, PretrainShortcut, check_overrides, register_family, register_upstream
from .tokenizer import convert_patch_weight, unpatchify

SIZES = {  # vision_transformer.py vit_small / vit_base; 'mini' is a test-size model of this project
    "mini": dict(embed_dim=64, depth=2, num_heads=4),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}
TARGET_LENGTH = 592  # fbank frames per input (official num_frames): 6 s at 32 kHz, 598 frames, cut to 37x16
OVERRIDES = {"backbone", "pooling", "random_init", "model_size", "target_length", "num_heads"}


def encoder_config(size: str, target_length: int = TARGET_LENGTH) -> EncoderConfig:
    return EncoderConfig(**SIZES[size], fshape=16, tshape=16, fstride=16, tstride=16,
                         input_tdim=target_length, token_order="time_major", num_prefix_tokens=1,
                         pos_embed="learned", norm_first=True, norm_eps=1e-6)


def build_asit(name: str, size: str, ckpt=None, **overrides) -> Upstream:
    check_overrides(name, overrides, OVERRIDES)
    path = resolve_checkpoint(name, ckpt, None, overrides.get("random_init", False))
    raw = (read_checkpoint(path, backbone=overrides.get("backbone", "teacher"),
                           num_heads=overrides.get("num_heads")) if path is not None else None)
    if raw is not None:
        if raw.family != "asit":
            raise CheckpointError(f"{raw.path} is a {raw.family} checkpoint, but {name!r} is an ASiT "
                                  f"upstream")
        enc = raw.encoder
        if overrides.get("target_length", enc.input_tdim) != enc.input_tdim:  # its position table fixes it
            raise ValueError(f"upstream {name!r}: target_length={overrides['target_length']}, but {raw.path} "
                             f"was trained on {enc.input_tdim}-frame inputs; leave target_length out")
    else:
        enc = encoder_config(overrides.get("model_size", size), overrides.get("target_length", TARGET_LENGTH))
    frontend = FbankConfig.asit(enc.input_tdim)
    if raw is not None and raw.extra.get("data_mean") is not None:  # the stats it was trained with
        frontend.norm_mean, frontend.norm_std = float(raw.extra["data_mean"]), float(raw.extra["data_std"])
    if raw is not None and raw.source == "astbench":
        frontend = raw.extra["upstream_config"].frontend
    cfg = UpstreamConfig("asit", enc, frontend, window_mode="exact",
                         pooling=overrides.get("pooling", "mean"))
    return upstream_with_weights(cfg, name, raw)


# ------------------------------------------------------------------------------------- official checkpoint
ASIT_ARCH_HEADS = {"vit_small": 6, "vit_base": 12}  # ASiT vision_transformer.py factories


def is_official_checkpoint(obj: dict) -> bool:
    """``main_ASiT.py``'s ``save_dict``: ``teacher`` and ``student`` at the top level."""
    return "teacher" in obj and "student" in obj


def read_official_checkpoint(obj: dict, path: Path, sha: str, *, backbone: str = "teacher",
                             num_heads: int | None = None) -> RawCheckpoint:
    """An ASiT ``checkpoint.pth``: the ``teacher`` backbone (keys ``backbone.*``, the default, as DINO-style
    methods evaluate) or the ``student`` one (``module.backbone.*``); the input length from the position
    table, the head count from ``args.arch`` (or 64-d heads, warned) unless given."""
    if backbone not in ("teacher", "student"):
        raise ValueError(f"asit backbone must be 'teacher' or 'student', got {backbone!r}")
    sd = obj[backbone]
    prefix = "module.backbone." if backbone == "student" else "backbone."
    if backbone == "student" and not any(k.startswith(prefix) for k in sd):
        prefix = "backbone."
    require_keys(sd, [f"{prefix}cls_token", f"{prefix}pos_embed", f"{prefix}patch_embed.proj.weight",
                      f"{prefix}norm.weight"], path, f"ASiT ({backbone})")
    w = sd[f"{prefix}patch_embed.proj.weight"]  # (D, 1, 16, 16) over (B, 1, T, F)
    D, kt, kf = w.shape[0], w.shape[2], w.shape[3]
    depth = block_depth(sd, f"{prefix}blocks.")
    pos = sd[f"{prefix}pos_embed"]
    n_f = 128 // kf
    if (pos.shape[1] - 1) % n_f:
        raise CheckpointError(f"ASiT checkpoint {path}: pos_embed rows {pos.shape[1]} - 1 not a multiple of "
                              f"{n_f}")
    num_frames = kt * (pos.shape[1] - 1) // n_f
    args = obj.get("args")
    args = vars(args) if args is not None and not isinstance(args, dict) else (args or {})
    if num_heads is None and args.get("arch") in ASIT_ARCH_HEADS:
        num_heads = ASIT_ARCH_HEADS[args["arch"]]
    elif num_heads is None:
        warnings.warn(f"ASiT checkpoint {path}: arch {args.get('arch')!r} does not fix the head count; "
                      f"assuming {max(1, D // 64)} (64-d heads). Pass num_heads=... if it was trained "
                      f"otherwise.", stacklevel=2)
    enc = EncoderConfig(embed_dim=D, depth=depth, num_heads=infer_num_heads(D, num_heads, path), fshape=kf,
                        tshape=kt, fstride=kf, tstride=kt, input_fdim=128, input_tdim=num_frames,
                        token_order="time_major", num_prefix_tokens=1, pos_embed="learned")
    state = {
        "prefix_tokens": sd[f"{prefix}cls_token"], "pos_embed": pos,
        "patch_embed.proj.weight": convert_patch_weight(w, "asit", kf, kt),
        "patch_embed.proj.bias": sd[f"{prefix}patch_embed.proj.bias"],
        "norm.weight": sd[f"{prefix}norm.weight"], "norm.bias": sd[f"{prefix}norm.bias"],
        **timm_block_state(sd, prefix, depth, path),
    }
    extra = {"num_frames": num_frames, "backbone": backbone, "epoch": obj.get("epoch"),
             "data_mean": args.get("data_mean"), "data_std": args.get("data_std")}
    return RawCheckpoint("asit", "official", str(path), sha, enc, state, extra)



# ------------------------------------------------------------------------------------------ pretraining
# CLSHead and RECHead (hidden, bottleneck): main_ASiT.py builds both with their defaults for every backbone
# (vision_transformer.py: CLSHead 2048 / 256, RECHead 768 / 128); 'mini' is scaled down for tests.
HEADS = {
    "mini": dict(head_hidden=128, head_bottleneck=32, rec_hidden=64, rec_bottleneck=16),
    "small": dict(head_hidden=2048, head_bottleneck=256, rec_hidden=768, rec_bottleneck=128),
    "base": dict(head_hidden=2048, head_bottleneck=256, rec_hidden=768, rec_bottleneck=128),
}


@dataclass
class ASiTPretrainConfig:
    """Group masked model learning + local/global self-distillation (``main_ASiT.py`` defaults)."""

    size: str = "base"
    target_length: int = TARGET_LENGTH  # fbank frames per view (official num_frames)
    crop_secs: float = 6.0  # two random 6 s crops per clip
    out_dim_cls: int = 8192
    out_dim_data: int = 1024
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    # official: np.linspace(0.04, 0.07, 30 epochs)[epoch], then 0.07; here per step: the value at step s is
    # np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_steps)[s]
    warmup_teacher_temp_steps: int = 0
    momentum_teacher: float = 0.996  # cosine schedule to 1 over training
    center_momentum: float = 0.9
    recon_weight: float = 2.0  # loss = clsloss + dtaloss + 2 * recloss
    drop_perc: tuple = (0.5, 0.7)  # zero-filled fraction of each view, U(0.5, 0.7)
    drop_replace: float = 0.3  # area of alien-concept blocks
    replace_prob: float = 0.5  # chance a view is corrupted with alien concepts instead of zeros
    drop_path: float = 0.1  # student only
    use_cls: bool = True  # global (class-token) distillation
    use_data: bool = True  # local (patch-token) distillation
    use_recon: bool = True  # reconstruction of corrupted bins
    alien: bool = True  # alien concepts on (else zeros only)
    corrupt: bool = True  # False: the student sees the clean views (Table II 'corr -'): no blocks, no aliens
    aligned_blocks: bool = False  # snap the blocks to the 16 x 16 patch grid (--drop_align 16, Section 4.4)
    norm_mean: float = -4.2677393
    norm_std: float = 4.5689974
    head_hidden: int | None = None  # CLSHead hidden_dim / bottleneck_dim, RECHead hidden / bottleneck dims;
    head_bottleneck: int | None = None  # None = HEADS[size]
    rec_hidden: int | None = None
    rec_bottleneck: int | None = None
    encoder: dict = field(default_factory=dict)  # EncoderConfig fields overriding the size table (e.g. depth)

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"ASiT size must be one of {list(SIZES)}, got {self.size!r}")
        if not (self.use_cls or self.use_data or self.use_recon):
            raise ValueError("ASiT needs at least one of use_cls, use_data, use_recon")
        if self.aligned_blocks and not self.corrupt:
            raise ValueError("ASiT aligned_blocks=true needs corrupt=true (there are no blocks to align)")

    def head_sizes(self) -> dict:
        return {k: HEADS[self.size][k] if getattr(self, k) is None else getattr(self, k)
                for k in HEADS[self.size]}


def _trunc_normal_linears(mlp: nn.Sequential) -> None:
    """The heads' ``_init_weights``: trunc-normal(0.02) Linear weights, zero biases."""
    for m in mlp:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)


class CLSHead(nn.Module):
    """DINO head: shared MLP -> L2 norm -> weight-normalised linear (gain fixed at 1) for the class token
    (``cls_layer``) and for patch tokens (``data_layer``)."""

    def __init__(self, dim: int, hidden: int, bottleneck: int, out_cls: int, out_data: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck))
        _trunc_normal_linears(self.mlp)
        # weight_v of the official weight-normed layers, nn.Linear's default init (only directions matter)
        self.cls_v = nn.Parameter(nn.Linear(bottleneck, out_cls, bias=False).weight.detach())
        self.data_v = nn.Parameter(nn.Linear(bottleneck, out_data, bias=False).weight.detach())

    def forward(self, cls: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cls (B, D), patches (B, N, D) -> (B, out_cls), (B, N, out_data)."""
        c = F.normalize(self.mlp(cls), dim=-1)
        p = F.normalize(self.mlp(patches), dim=-1)
        # weight_norm with g = 1 is a row-normalised weight
        return F.linear(c, F.normalize(self.cls_v, dim=1)), F.linear(p, F.normalize(self.data_v, dim=1))


class RECHead(nn.Module):
    """Patch tokens -> MLP (GELU after every Linear, the bottleneck's included) -> transposed conv back to the
    spectrogram (one 16x16 patch per token).

    With kernel = stride the transposed conv maps each token to its own patch, i.e. a linear layer; it runs
    as one (here: ``(B*N, C) @ (C, 256)``) matmul on the official ``conv_trans`` weight ``(C, 1, 16, 16)``.
    The conv's backward returned that weight's gradient with other strides on its size-1 dim, which made
    DDP warn ("grad strides do not match bucket view strides") and copy it every step.
    """

    def __init__(self, dim: int, hidden: int, bottleneck: int, patch: int = 16):
        super().__init__()
        self.patch = patch
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, bottleneck), nn.GELU())
        _trunc_normal_linears(self.mlp)
        self.conv_trans = nn.ConvTranspose2d(bottleneck, 1, kernel_size=patch, stride=patch)

    def forward(self, patches: torch.Tensor, n_t: int, n_f: int) -> torch.Tensor:
        """(B, N, D) time-major tokens -> (B, n_t*16, n_f*16) spectrogram."""
        w, b = self.conv_trans.weight, self.conv_trans.bias  # (C, 1, p, p), (1,)
        x = self.mlp(patches) @ w.flatten(1) + b  # (B, N, p*p), patch flattened time-outer
        return unpatchify(x, n_f, n_t, self.patch, self.patch, "time_major")


class ASiTObjective(Objective):
    """Student sees GMML-corrupted views, the EMA teacher the clean ones. Losses: DINO cross-view CE on
    class tokens, CE on patch tokens at the same positions of the same view, L1 reconstruction of the
    corrupted bins. With ``corrupt=False`` the student sees the clean views too and the reconstruction
    covers every bin; ``aligned_blocks=True`` snaps the corruption blocks to the patch grid."""

    family = "asit"
    num_views = 2

    def __init__(self, cfg: ASiTPretrainConfig):
        super().__init__()
        self.cfg = cfg
        overrides = {"drop_path": cfg.drop_path, **cfg.encoder}
        enc_cfg = override_encoder(encoder_config(cfg.size, cfg.target_length), overrides, "asit")
        self.encoder = ASTEncoder(enc_cfg)  # student
        D, h = enc_cfg.embed_dim, cfg.head_sizes()
        self.head = CLSHead(D, h["head_hidden"], h["head_bottleneck"], cfg.out_dim_cls, cfg.out_dim_data)
        self.rec_head = RECHead(D, h["rec_hidden"], h["rec_bottleneck"])
        self.teacher = ASTEncoder(EncoderConfig.from_dict({**enc_cfg.to_dict(), "drop_path": 0.0}))
        self.teacher_head = CLSHead(D, h["head_hidden"], h["head_bottleneck"], cfg.out_dim_cls,
                                    cfg.out_dim_data)
        self.teacher.load_state_dict(self.encoder.state_dict())
        self.teacher_head.load_state_dict(self.head.state_dict())
        for p in list(self.teacher.parameters()) + list(self.teacher_head.parameters()):
            p.requires_grad_(False)
        self.register_buffer("center_cls", torch.zeros(1, cfg.out_dim_cls))
        self.register_buffer("center_data", torch.zeros(1, 1, cfg.out_dim_data))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        # Teacher-output sums of the optimizer step under way: [sum cls (K_cls), sum patch (K_data), n_cls,
        # n_patch]. A plain attribute, not a buffer: DDP broadcasts rank 0's buffers before every forward,
        # which would overwrite the other ranks' sums. Reset by after_step.
        self._center_sums: torch.Tensor | None = None
        self.frontend = FbankConfig.asit(cfg.target_length)
        self.frontend.norm_mean, self.frontend.norm_std = cfg.norm_mean, cfg.norm_std
        self.crop_secs = cfg.crop_secs

    def param_groups(self, weight_decay: float) -> list[dict]:
        """DINO's groups (``utils.get_params_groups`` on the student): no decay for biases, 1-D parameters."""
        return dino_param_groups(self, weight_decay)

    def upstream_config(self) -> UpstreamConfig:
        return UpstreamConfig("asit", self.teacher.cfg, self.frontend, window_mode="exact")

    def to_upstream(self) -> Upstream:
        up = Upstream(self.upstream_config())
        up.encoder.load_state_dict(self.teacher.state_dict())  # DINO-style: the teacher is evaluated
        return up

    def teacher_temp(self) -> torch.Tensor:
        """Linear warm-up ``warmup_teacher_temp -> teacher_temp`` over ``warmup_teacher_temp_steps`` (DINO
        ``teacher_temp_schedule``); a 0-d tensor computed on the device, so reading it never syncs."""
        c = self.cfg
        if c.warmup_teacher_temp_steps <= 0:
            return torch.full((), c.teacher_temp, device=self.step.device)  # a fill kernel, no host copy
        # np.linspace(warm, final, W)[step]: the last warm-up step (W - 1) already reaches the final value
        frac = (self.step.float() / max(c.warmup_teacher_temp_steps - 1, 1)).clamp(max=1.0)
        return c.warmup_teacher_temp + (c.teacher_temp - c.warmup_teacher_temp) * frac

    def forward(self, fbank: torch.Tensor, num_frames: torch.Tensor | None,
                generator: torch.Generator | None = None,
                corruption: tuple[torch.Tensor, torch.Tensor] | None = None):
        """fbank (B, 2, T, F): two normalised views per clip -> (loss, logs).

        ``corruption``: the student's views and where they were corrupted, ``(corrupted (B, 2, T, F),
        mask (B, 2, T, F) bool)``, e.g. what the official data pipeline drew for a golden fixture; default:
        drawn from ``generator`` by :func:`~upstream.corruption.asit_corrupt` (or none with
        ``corrupt=False``).
        """
        c = self.cfg
        B, V, T, Fb = fbank.shape
        clean = fbank.reshape(B * V, T, Fb)
        n_f, n_t = self.encoder.grid_for(T)
        if corruption is not None:
            corrupted, mask = corruption
            if tuple(corrupted.shape) != tuple(fbank.shape) or tuple(mask.shape) != tuple(fbank.shape) \
                    or mask.dtype != torch.bool:
                raise ValueError(f"ASiT corruption must be (views, bool mask), both shaped "
                                 f"{tuple(fbank.shape)}; got {tuple(corrupted.shape)} and {mask.dtype} "
                                 f"{tuple(mask.shape)}")
            corrupted, mask = corrupted.reshape(B * V, T, Fb), mask.reshape(B * V, T, Fb)
        elif c.corrupt:
            corrupted, mask = asit_corrupt(clean, drop_perc=tuple(c.drop_perc), drop_replace=c.drop_replace,
                                           replace_prob=c.replace_prob if c.alien else 0.0,
                                           align=self.encoder.cfg.tshape if c.aligned_blocks else 1,
                                           generator=generator)  # (BV, T, F), mask (BV, T, F)
        else:
            corrupted, mask = clean, None
        with torch.no_grad():
            t = self.teacher.forward_features(clean)  # (BV, 1+N, D)
            t_cls, t_data = self.teacher_head(t[:, 0], t[:, 1:])
        s = self.encoder.forward_features(corrupted)
        s_cls, s_data = self.head(s[:, 0], s[:, 1:])
        tt, st = self.teacher_temp(), c.student_temp
        loss, logs = s.new_zeros(()), {}
        if c.use_cls:  # global: teacher view a against student view b != a
            tp = F.softmax((t_cls.float() - self.center_cls) / tt, -1).view(B, V, -1)
            sl = F.log_softmax(s_cls.float() / st, -1).view(B, V, -1)
            pairs = [(a, b) for a in range(V) for b in range(V) if a != b]
            cls_loss = sum(-(tp[:, a] * sl[:, b]).sum(-1).mean() for a, b in pairs) / len(pairs)
            loss, logs["cls"] = loss + cls_loss, cls_loss.detach()
        if c.use_data:  # local: same view, same positions, every patch token (corrupted or not)
            tp = F.softmax((t_data.float() - self.center_data) / tt, -1)
            data_loss = -(tp * F.log_softmax(s_data.float() / st, -1)).sum(-1).mean()
            loss, logs["data"] = loss + data_loss, data_loss.detach()
        if c.use_recon:  # L1 on the corrupted bins only
            rec = self.rec_head(s[:, 1:], n_t, n_f)  # (BV, n_t*16, n_f*16)
            err = (rec.float() - clean[:, : n_t * 16, : n_f * 16].float()).abs()
            if mask is None:
                # Nothing corrupted: main_ASiT.py's rloss[masks == 1].mean() would be the NaN mean of an
                # empty selection, so the 'corr - / rec +' row is read as a plain autoencoder, L1 on all bins.
                rec_loss = err.mean()
            else:
                m = mask[:, : n_t * 16, : n_f * 16].to(err.dtype)
                rec_loss = (err * m).sum() / m.sum().clamp(min=1)
            loss, logs["recon"] = loss + c.recon_weight * rec_loss, rec_loss.detach()
        if self.training:
            self._accumulate_center_stats(t_cls, t_data)
        logs["teacher_temp"] = tt.detach()
        return loss, logs

    @torch.no_grad()
    def _accumulate_center_stats(self, t_cls: torch.Tensor, t_data: torch.Tensor) -> None:
        """Add this micro-batch's teacher outputs to the step's sums; the centres move in after_step."""
        n_cls, n_data = t_cls.shape[0], t_data.shape[0] * t_data.shape[1]
        counts = [torch.full((1,), n, dtype=torch.float32, device=t_cls.device) for n in (n_cls, n_data)]
        sums = torch.cat([t_cls.float().sum(0), t_data.float().sum((0, 1)), *counts])  # (K_cls + K_data + 2,)
        self._center_sums = sums if self._center_sums is None else self._center_sums + sums

    @torch.no_grad()
    def update_centers(self) -> None:
        """DINO ``update_center``, once per optimizer step: the mean teacher output over the whole global
        batch (all micro-batches, all-reduced over ranks), then an EMA with ``center_momentum``.

        Moving the centres inside ``forward`` instead would move them once per micro-batch, so gradient
        accumulation and DDP runs of the same global batch would drift apart.
        """
        sums, self._center_sums = self._center_sums, None
        if sums is None:  # no training forward since the last update
            return
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(sums)  # every rank calls after_step at every step
        k_cls = self.center_cls.shape[-1]
        n_cls, n_data = sums[-2], sums[-1]
        cls_mean = (sums[:k_cls] / n_cls.clamp(min=1)).view_as(self.center_cls)  # (1, K_cls)
        data_mean = (sums[k_cls:-2] / n_data.clamp(min=1)).view_as(self.center_data)  # (1, 1, K_data)
        m = self.cfg.center_momentum
        self.center_cls.mul_(m).add_(cls_mean, alpha=1 - m)
        self.center_data.mul_(m).add_(data_mean, alpha=1 - m)

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """Once per optimizer step: the centres (see :meth:`update_centers`), then the EMA teacher with the
        cosine momentum schedule m0 -> 1 (DINO ``cosine_scheduler``), as DINO's ``train_one_epoch`` orders
        them (the centre update belongs to the loss of the step just taken)."""
        self.update_centers()
        m0 = self.cfg.momentum_teacher
        m = 1 - (1 - m0) * (math.cos(math.pi * step / max(total_steps, 1)) + 1) / 2
        teacher = [*self.teacher.parameters(), *self.teacher_head.parameters()]
        student = [p.detach() for p in (*self.encoder.parameters(), *self.head.parameters())]
        torch._foreach_mul_(teacher, m)  # one multi-tensor kernel instead of one per parameter
        torch._foreach_add_(teacher, student, alpha=1 - m)
        self.step += 1

    def step_flops(self, num_frames: int) -> float:
        """Analytic FLOPs of one training step per clip of ``num_frames`` fbank frames
        (:func:`~upstream.objective.block_train_flops`), per view: the student (patch embedding, encoder over
        1 + N tokens, DINO head MLP on all tokens and its last layers to K_cls on the class token and K_data
        on the patch tokens, the reconstruction head on N tokens), trained; the teacher encoder and DINO
        head, forward only."""
        e = self.encoder.cfg
        D, r, patch = e.embed_dim, e.mlp_ratio, e.fshape * e.tshape
        n_f, n_t = self.encoder.grid_for(num_frames)
        N = n_f * n_t
        L = N + e.num_prefix_tokens
        mlp = self.head.mlp
        hidden, bottleneck = mlp[0].out_features, mlp[4].out_features
        k_cls, k_data = self.head.cls_v.shape[0], self.head.data_v.shape[0]
        rec = self.rec_head.mlp
        rec_hidden, rec_bottleneck = rec[0].out_features, rec[4].out_features

        def dino_head(train: bool) -> float:
            return (linear_flops(L, D, hidden, train) + linear_flops(L, hidden, hidden, train)
                    + linear_flops(L, hidden, bottleneck, train) + linear_flops(1, bottleneck, k_cls, train)
                    + linear_flops(N, bottleneck, k_data, train))

        student = (linear_flops(N, patch, D) + block_train_flops(L, D, e.depth, r) + dino_head(True)
                   + linear_flops(N, D, rec_hidden) + linear_flops(N, rec_hidden, rec_hidden)
                   + linear_flops(N, rec_hidden, rec_bottleneck) + linear_flops(N, rec_bottleneck, patch))
        teacher = (linear_flops(N, patch, D, False) + block_train_flops(L, D, e.depth, r, False)
                   + dino_head(False))
        return self.num_views * (student + teacher)


def _register(name: str, size: str, desc: str, random_default: bool) -> None:
    def builder(ckpt=None, **overrides) -> Upstream:
        if random_default:
            overrides.setdefault("random_init", ckpt is None)
        return build_asit(name, size, ckpt, **overrides)

    builder.__doc__ = desc
    register_upstream(name, desc, family="asit")(builder)


_register("asit_base", "base", "ASiT ViT-B/16 at 32 kHz (no released weights: pass ckpt)", False)
_register("asit_small", "small", "ASiT ViT-S/16 at 32 kHz (no released weights: pass ckpt)", False)
_register("asit_mini", "mini", "test-size ASiT model (D=64, 2 blocks)", True)

FAMILY = register_family(FamilySpec(
    name="asit", title="ASiT", module=__name__,
    objective=ASiTObjective, objective_config=ASiTPretrainConfig,
    frontend=FbankConfig.asit, overrides=frozenset(OVERRIDES),
    checkpoint_format="ASiT checkpoint.pth", detect_checkpoint=is_official_checkpoint,
    read_checkpoint=read_official_checkpoint,
    shortcuts=(PretrainShortcut("asit", {"family": "asit"}, "configs/pretrain/asit_base.yaml",
                                "configs/pretrain/asit_mini.yaml", "asit_mini"),),
    upstream_prefix=lambda cfg: f"asit_{cfg.size}",
))
